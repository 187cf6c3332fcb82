// What every trial of a study shares and what is made once per study, in the study's directory:
// a generated token stream (spec data.synthetic) and the pretrained source (spec pretrain).
// Workers prepare them under a file lock, so the first makes them and the others wait and reuse.
#pragma once

#include <cstdint>
#include <filesystem>
#include <ostream>
#include <string>

#include "search/sweep/spec.h"
#include "search/sweep/trial.h"

namespace prime::search {

// `device`: what trials run on (cpu, cuda). Runs data generation and pretraining when the spec
// asks and they are not there yet; a pretraining killed midway is started over.
StudyInputs prepare_study_inputs(const SweepSpec& spec, const std::filesystem::path& study_dir,
                                 const std::string& device, std::ostream& log);

// A learnable stream of `count` ids below `vocab`: a seeded first-order Markov chain (each id
// has two likely successors, plus 1 in 8 uniformly random ids) in which the last quarter of every
// 64-token block repeats tokens 32 back (something only recall can predict).
void write_synthetic_shard(const std::string& path, int64_t count, int64_t vocab, uint64_t seed);

}  // namespace prime::search
