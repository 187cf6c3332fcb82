// prime-bench: throughput measurements. One subcommand per thing measured.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "convert/convert_bench.h"
#include "eval/decode_bench.h"
#include "eval/decode_step_bench.h"
#include "eval/packed_documents_bench.h"
#include "eval/linear_decode_bench.h"
#include "eval/chunk_gemm_bench.h"
#include "eval/gated_norm_bench.h"
#include "eval/rms_norm_bench.h"
#include "eval/rope_bench.h"
#include "eval/json_output.h"
#include "eval/short_conv_bench.h"
#include "eval/ssm_bench.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_bench.h"
#include "train/train_bench.h"
#include "util/cli.h"
#include "util/cli_checks.h"
#include "util/device_info.h"
#include "util/error.h"

namespace {

struct TokenizerOptions {
  std::string tokenizer;
  std::string text;
  int threads = 1;
  int repeat = 3;
  size_t chunk_bytes = 64 * 1024;
};

void add_tokenizer_command(CLI::App& app, TokenizerOptions& options) {
  CLI::App* command = app.add_subcommand("tokenizer", "encode throughput (MB/s, tokens/s) of a tokenizer on a text file");
  command->add_option("--tokenizer", options.tokenizer,
                      "tokenizer.json, a directory holding one, or a *.tiktoken file (read as Qwen2)")
      ->required()->group("Inputs");
  command->add_option("--text", options.text, "text file to encode; FILE.xz is decompressed with xz")
      ->required()->group("Inputs");
  command->add_option("--threads", options.threads, "encoding threads (default 1)")
      ->check(prime::positive_number())->group("Measurement");
  command->add_option("--repeat", options.repeat, "passes over the text; the first runs with a cold word cache (default 3)")
      ->check(prime::positive_number())->group("Measurement");
  command->add_option("--chunk-bytes", options.chunk_bytes,
                      "text is encoded in chunks of about this size, cut at line ends (default 65536)")
      ->check(prime::positive_number())->group("Measurement");
}

void run_tokenizer(const TokenizerOptions& options) {
  const prime::io::Tokenizer tokenizer = prime::io::Tokenizer::from_file(options.tokenizer);
  const std::string text = prime::io::read_text_maybe_xz(options.text);
  const auto chunks = prime::io::split_into_chunks(text, options.chunk_bytes);
  std::cout << "tokenizer " << options.tokenizer << " (vocab " << tokenizer.vocab_size() << ")\n"
            << "text      " << options.text << " (" << text.size() << " bytes, " << chunks.size()
            << " chunks)\n";
  prime::io::print_encode_passes(
      prime::io::bench_encode(tokenizer, chunks, options.threads, options.repeat), std::cout);
}

struct SsmOptions {
  prime::eval::SsmBenchOptions bench;
  std::string device = "auto";
  std::string dtype = "fp32";
  std::string types = "GDN,GKA,M2";
  bool no_backward = false;
  bool profile = false;  // kernels only: one profiled pass per type instead of the timings
};

// `ssm` (the torch-ops forms alone) and `kernels` (prime's CUDA kernels vs those forms) share
// their options.
CLI::App* add_ssm_command(CLI::App& app, SsmOptions& options, const char* name = "ssm",
                          const char* description = "chunked SSM cores (torch-ops forms): forward and forward+backward time") {
  CLI::App* command = app.add_subcommand(name, description);
  command->add_option("--types", options.types, "comma-separated: GDN, GKA, M2 (default all)")->group("Inputs");
  command->add_option("--batch", options.bench.batch, "B (default 4)")->check(prime::positive_number())->group("Shape");
  command->add_option("--tokens", options.bench.tokens, "T (default 8192)")->check(prime::positive_number())->group("Shape");
  command->add_option("--heads", options.bench.heads, "H (default 32)")->check(prime::positive_number())->group("Shape");
  command->add_option("--head-dim", options.bench.head_dim, "D (default 128)")
      ->check(prime::positive_number())->group("Shape");
  command->add_option("--gka-iterations", options.bench.gka_iterations, "Chebyshev iterations (default 30)")
      ->check(prime::non_negative_number())->group("Shape");
  command->add_option("--device", options.device, "cpu, cuda, auto")->group("Measurement");
  command->add_option("--dtype", options.dtype,
                      "core compute dtype: fp32 (what the mixers use) or fp64; kernels also bf16 (GDN's and Mamba-2's "
                      "bf16 forward and backward, GKA's bf16 forward, vs the torch-ops forms on fp32 copies)")
      ->group("Measurement");
  command->add_option("--repeats", options.bench.repeats, "timed runs, median reported (default 3)")
      ->check(prime::positive_number())->group("Measurement");
  command->add_flag("--no-backward", options.no_backward, "forward only")->group("Measurement");
  return command;
}

at::Device finish_ssm_options(SsmOptions& options) {
  options.bench.dtype = prime::parse_dtype_flag(options.dtype);
  options.bench.backward = !options.no_backward;
  options.bench.types.clear();
  std::stringstream items(options.types);
  for (std::string item; std::getline(items, item, ',');) options.bench.types.push_back(item);
  return prime::parse_device(options.device);
}

// How many times faster ours is than the other path (0 where ours was not timed).
double ratio(double ours, double other) { return ours > 0 ? other / ours : 0.0; }

void run_kernels(SsmOptions& options) {
  const at::Device device = finish_ssm_options(options);
  if (options.profile) {
    for (const std::string& shape : prime::eval::profile_kernel_cores(options.bench, device))
      std::cout << "profiled once (after one warm-up), between cudaProfilerStart and cudaProfilerStop: " << shape
                << "\n";
    return;
  }
  const auto rows = prime::eval::run_kernel_bench(options.bench, device);
  std::cout << "device " << device << "; each core timed with prime's kernels and with the torch-ops form\n"
            << std::left << std::setw(6) << "type" << std::setw(28) << "(B,T,H,D) dtype" << std::right
            << std::setw(11) << "fwd ms" << std::setw(11) << "torch ms" << std::setw(8) << "ratio"
            << std::setw(10) << "TFLOP/s" << std::setw(14) << "fwd+bwd ms" << std::setw(11) << "torch ms"
            << std::setw(8) << "ratio" << "\n";
  for (const auto& row : rows) {
    std::cout << std::left << std::setw(6) << row.type << std::setw(28) << row.shape << std::right << std::fixed
              << std::setprecision(2) << std::setw(11) << row.kernel_forward_ms << std::setw(11)
              << row.torch_forward_ms << std::setw(7) << ratio(row.kernel_forward_ms, row.torch_forward_ms) << "x"
              << std::setw(10) << row.kernel_forward_tflops;
    if (row.kernel_forward_backward_ms > 0)
      std::cout << std::setw(14) << row.kernel_forward_backward_ms << std::setw(11) << row.torch_forward_backward_ms
                << std::setw(7) << ratio(row.kernel_forward_backward_ms, row.torch_forward_backward_ms) << "x\n";
    else
      std::cout << std::setw(14) << "-" << std::setw(11) << "-" << std::setw(8) << "-" << "\n";
  }
  if (options.bench.dtype == at::kBFloat16 &&
      std::find(options.bench.types.begin(), options.bench.types.end(), "GKA") != options.bench.types.end()) {
    const auto solve = prime::eval::time_gka_solve_one_group(options.bench, device);
    if (solve.ms > 0)
      std::cout << "GKA bf16 solve alone on one warpgroup a chunk (kernels/gka_solve/gka_solve_one.h), " << solve.chunks
                << " chunks, N=" << options.bench.gka_iterations << ", " << solve.blocks_per_multiprocessor
                << " blocks a multiprocessor: " << std::setprecision(3) << solve.ms << " ms\n";
  }
  // The short conv through model::causal_conv_silu: the kernel under policy Auto, the torch form under Torch.
  prime::eval::ShortConvBenchOptions conv;
  conv.repeats = options.bench.repeats;
  conv.backward = options.bench.backward;
  std::cout << "\nshort conv + SiLU (kernels/short_conv), TB/s = traffic floor / time\n"
            << std::left << std::setw(34) << "(B,T,C) dtype K" << std::right << std::setw(11) << "fwd ms"
            << std::setw(11) << "torch ms" << std::setw(8) << "ratio" << std::setw(8) << "TB/s" << std::setw(14)
            << "fwd+bwd ms" << std::setw(11) << "torch ms" << std::setw(8) << "ratio" << std::setw(8) << "TB/s\n";
  for (const auto& row : prime::eval::run_short_conv_bench(conv, device)) {
    std::cout << std::left << std::setw(34) << row.shape << std::right << std::fixed << std::setprecision(3)
              << std::setw(11) << row.kernel_forward_ms << std::setw(11) << row.torch_forward_ms << std::setw(7)
              << std::setprecision(2) << ratio(row.kernel_forward_ms, row.torch_forward_ms) << "x" << std::setw(8)
              << row.kernel_forward_tbps << std::setprecision(3) << std::setw(14) << row.kernel_forward_backward_ms
              << std::setw(11) << row.torch_forward_backward_ms << std::setw(7) << std::setprecision(2)
              << ratio(row.kernel_forward_backward_ms, row.torch_forward_backward_ms) << "x" << std::setw(8)
              << row.kernel_forward_backward_tbps << "\n";
  }
  // One layer of each type over ragged packed documents: the packed path against the per-document buckets.
  std::cout << "\none SSM layer over packed documents: packed (chunks per document) vs per-document buckets; the "
               "first two columns: tokens each path runs the core on, as a multiple of B*T\n"
            << std::left << std::setw(6) << "type" << std::setw(42) << "(B,T,hidden,H,D) dtype, documents" << std::right
            << std::setw(10) << "packed" << std::setw(10) << "bucketed" << std::setw(14) << "packed ms"
            << std::setw(13) << "bucketed ms" << std::setw(8) << "ratio" << std::setw(14) << "fwd+bwd ms"
            << std::setw(13) << "bucketed ms" << std::setw(8) << "ratio\n";
  for (const std::string& type : options.bench.types) {
    if (type != "GDN" && type != "GKA" && type != "M2") continue;
    prime::eval::PackedDocumentsBenchOptions varlen;
    varlen.type = type;
    varlen.repeats = options.bench.repeats;
    varlen.backward = options.bench.backward;
    const prime::eval::PackedDocumentsBenchRow packed = prime::eval::run_packed_documents_bench(varlen, device);
    std::cout << std::left << std::setw(6) << packed.type << std::setw(42) << packed.shape << std::right << std::fixed
              << std::setprecision(2) << std::setw(9) << packed.chunk_tokens << "x" << std::setw(9)
              << packed.bucket_tokens << "x" << std::setprecision(3) << std::setw(14) << packed.packed_forward_ms
              << std::setw(13) << packed.bucketed_forward_ms << std::setw(7) << std::setprecision(2)
              << ratio(packed.packed_forward_ms, packed.bucketed_forward_ms) << "x" << std::setprecision(3)
              << std::setw(14) << packed.packed_forward_backward_ms << std::setw(13)
              << packed.bucketed_forward_backward_ms << std::setw(7) << std::setprecision(2)
              << ratio(packed.packed_forward_backward_ms, packed.bucketed_forward_backward_ms) << "x\n";
  }
  // One decode step of the SSM cores at the 8B shape: kernels/ssm_decode vs the torch in-place step.
  // The "% HBM" columns: of this device's peak bandwidth (util/device_info.h).
  const double hbm_tbps = prime::floor_bandwidth_gbps(0, device) / 1e3;
  prime::eval::DecodeStepBenchOptions step;
  step.repeats = options.bench.repeats;
  step.hbm_tbps = hbm_tbps;
  std::cout << "\ndecode step of a layer (kernels/ssm_decode, kernels/attention_decode; ATTN: bf16 cache), TB/s = traffic "
               "floor / time; copy: a device-to-device copy of the state's size, same run; % of " << std::fixed
            << std::setprecision(1) << step.hbm_tbps << " TB/s\n"
            << std::left << std::setw(6) << "type" << std::setw(28) << "shape" << std::right << std::setw(10) << "MB"
            << std::setw(11) << "ours ms" << std::setw(8) << "TB/s" << std::setw(8) << "% HBM" << std::setw(11)
            << "torch ms" << std::setw(8) << "TB/s" << std::setw(8) << "ratio" << std::setw(11) << "copy TB/s"
            << std::setw(8) << "% copy\n";
  for (const auto& row : prime::eval::run_decode_step_bench(step, device)) {
    std::cout << std::left << std::setw(6) << row.type << std::setw(28) << row.shape << std::right << std::fixed
              << std::setprecision(1) << std::setw(10) << row.floor_bytes / 1e6 << std::setprecision(4)
              << std::setw(11) << row.kernel_ms << std::setprecision(2) << std::setw(8) << row.kernel_tbps
              << std::setprecision(1) << std::setw(7) << 100 * row.kernel_fraction_of_hbm << "%"
              << std::setprecision(4) << std::setw(11) << row.torch_ms << std::setprecision(2) << std::setw(8)
              << row.torch_tbps << std::setw(7) << (row.kernel_ms > 0 ? row.torch_ms / row.kernel_ms : 0.0) << "x";
    if (row.copy_tbps > 0)
      std::cout << std::setw(11) << row.copy_tbps << std::setprecision(1) << std::setw(7)
                << 100 * row.kernel_fraction_of_copy << "%";
    std::cout << "\n";
  }
  // The decode step's weight projections: kernels/linear_decode vs at::linear (cuBLAS).
  prime::eval::LinearDecodeBenchOptions projection;
  projection.repeats = options.bench.repeats;
  projection.hbm_tbps = hbm_tbps;
  std::cout << "\ndecode projection y = x W^T (kernels/linear_decode vs at::linear), per call in a replayed CUDA graph "
            << "and launched eagerly; TB/s = weight bytes / time, % of " << std::fixed << std::setprecision(1)
            << projection.hbm_tbps << " TB/s\n"
            << std::left << std::setw(6) << "type" << std::setw(28) << "rows x N x K dtype" << std::right
            << std::setw(9) << "MB" << std::setw(11) << "graph ms" << std::setw(8) << "TB/s" << std::setw(8) << "% HBM"
            << std::setw(11) << "torch ms" << std::setw(8) << "ratio" << std::setw(11) << "eager ms" << std::setw(8)
            << "TB/s" << std::setw(11) << "torch ms" << std::setw(8) << "ratio" << std::setw(13) << "per-unit ms\n";
  for (const auto& row : prime::eval::run_linear_decode_bench(projection, device)) {
    std::cout << std::left << std::setw(6) << "LIN" << std::setw(28) << row.shape << std::right << std::fixed
              << std::setprecision(1) << std::setw(9) << row.weight_bytes / 1e6 << std::setprecision(4)
              << std::setw(11) << row.kernel_graph_ms << std::setprecision(2) << std::setw(8) << row.kernel_graph_tbps
              << std::setprecision(1) << std::setw(7) << 100 * row.kernel_graph_fraction_of_hbm << "%"
              << std::setprecision(4) << std::setw(11) << row.torch_graph_ms << std::setprecision(2) << std::setw(7)
              << ratio(row.kernel_graph_ms, row.torch_graph_ms) << "x" << std::setprecision(4) << std::setw(11)
              << row.kernel_ms << std::setprecision(2) << std::setw(8) << row.kernel_tbps << std::setprecision(4)
              << std::setw(11) << row.torch_ms << std::setprecision(2) << std::setw(7)
              << ratio(row.kernel_ms, row.torch_ms) << "x" << std::setprecision(4) << std::setw(13)
              << row.kernel_graph_per_unit_ms << "\n";
  }
  // Projections sharing x in one launch (q/k/v; gate/up ending in silu(gate) * up) vs separate calls.
  prime::eval::LinearDecodeGroupBenchOptions grouped;
  grouped.common.repeats = options.bench.repeats;
  grouped.common.hbm_tbps = hbm_tbps;
  std::cout << "\ngrouped decode projections at 1 row (one launch vs the kernel per weight vs at::linear), per call "
            << "in a replayed CUDA graph; TB/s = weight bytes / grouped time, % of " << std::fixed
            << std::setprecision(1) << grouped.common.hbm_tbps << " TB/s; per-unit: the grouped launch with a warp "
            << "per unit of rows instead of one wave\n"
            << std::left << std::setw(6) << "type" << std::setw(34) << "what" << std::right << std::setw(9) << "MB"
            << std::setw(11) << "grouped ms" << std::setw(8) << "TB/s" << std::setw(8) << "% HBM" << std::setw(13)
            << "per-unit ms" << std::setw(13) << "separate ms" << std::setw(8) << "ratio" << std::setw(11)
            << "torch ms" << std::setw(8) << "ratio\n";
  for (const auto& row : prime::eval::run_linear_decode_group_bench(grouped, device)) {
    std::cout << std::left << std::setw(6) << "GRP" << std::setw(34) << row.what << std::right << std::fixed
              << std::setprecision(1) << std::setw(9) << row.weight_bytes / 1e6 << std::setprecision(4)
              << std::setw(11) << row.grouped_graph_ms << std::setprecision(2) << std::setw(8) << row.grouped_tbps
              << std::setprecision(1) << std::setw(7) << 100 * row.grouped_fraction_of_hbm << "%"
              << std::setprecision(4) << std::setw(13) << row.grouped_per_unit_graph_ms << std::setw(13)
              << row.separate_graph_ms << std::setprecision(2) << std::setw(7)
              << ratio(row.grouped_graph_ms, row.separate_graph_ms) << "x" << std::setprecision(4) << std::setw(11)
              << row.torch_graph_ms << std::setprecision(2) << std::setw(7)
              << ratio(row.grouped_graph_ms, row.torch_graph_ms) << "x\n";
  }
  // The decode step's fused elementwise kernels against their torch forms.
  prime::eval::RmsNormBenchOptions norm;
  norm.repeats = options.bench.repeats;
  std::cout << "\nRMSNorm (kernels/rms_norm), TB/s = bytes read and written / time\n"
            << std::left << std::setw(24) << "rows x D dtype" << std::setw(11) << "op" << std::right << std::setw(11)
            << "ours ms" << std::setw(8) << "TB/s" << std::setw(11) << "torch ms" << std::setw(8) << "TB/s"
            << std::setw(8) << "ratio\n";
  for (const auto& row : prime::eval::run_rms_norm_bench(norm, device)) {
    std::cout << std::left << std::setw(24) << row.shape << std::setw(11) << row.op
              << std::right << std::fixed << std::setprecision(4) << std::setw(11) << row.kernel_ms
              << std::setprecision(2) << std::setw(8) << row.kernel_tbps << std::setprecision(4) << std::setw(11)
              << row.torch_ms << std::setprecision(2) << std::setw(8) << row.torch_tbps << std::setw(7)
              << (row.kernel_ms > 0 ? row.torch_ms / row.kernel_ms : 0.0) << "x\n";
  }
  prime::eval::GatedNormBenchOptions gated;
  gated.repeats = options.bench.repeats;
  std::cout << "\nthe SSM mixers' gated output norms (kernels/gated_norm): x fp32, out bf16, TB/s = bytes read and "
            << "written / time\n"
            << std::left << std::setw(24) << "tokens x H x D" << std::setw(26) << "op" << std::right << std::setw(11)
            << "ours ms" << std::setw(8) << "TB/s" << std::setw(11) << "torch ms" << std::setw(8) << "TB/s"
            << std::setw(8) << "ratio\n";
  for (const auto& row : prime::eval::run_gated_norm_bench(gated, device)) {
    std::cout << std::left << std::setw(24) << row.shape << std::setw(26) << row.op << std::right << std::fixed
              << std::setprecision(4) << std::setw(11) << row.kernel_ms << std::setprecision(2) << std::setw(8)
              << row.kernel_tbps << std::setprecision(4) << std::setw(11) << row.torch_ms << std::setprecision(2)
              << std::setw(8) << row.torch_tbps << std::setw(7) << ratio(row.kernel_ms, row.torch_ms) << "x\n";
  }
  prime::eval::ChunkGemmBenchOptions products;
  products.repeats = options.bench.repeats;
  std::cout << "\nbatched fp32 products of the chunked backward (kernels/chunk_gemm, 3xTF32 tensor cores, vs cuBLAS's "
            << "fp32 baddbmm), T = a transposed view\n"
            << std::left << std::setw(30) << "batch x (m x k)(k x n)" << std::setw(30) << "used for" << std::right
            << std::setw(10) << "ours ms" << std::setw(9) << "TFLOP/s" << std::setw(10) << "torch ms" << std::setw(9)
            << "TFLOP/s" << std::setw(8) << "ratio" << std::setw(8) << "TB/s\n";
  for (const auto& row : prime::eval::run_chunk_gemm_bench(products, device)) {
    std::cout << std::left << std::setw(30) << row.shape << std::setw(30) << row.use << std::right << std::fixed
              << std::setprecision(4) << std::setw(10) << row.kernel_ms << std::setprecision(1) << std::setw(9)
              << row.kernel_tflops << std::setprecision(4) << std::setw(10) << row.torch_ms << std::setprecision(1)
              << std::setw(9) << row.torch_tflops << std::setprecision(2) << std::setw(7)
              << ratio(row.kernel_ms, row.torch_ms) << "x" << std::setw(8)
              << row.bytes / (row.kernel_ms * 1e-3) / 1e12 << "\n";
  }
  prime::eval::RopeBenchOptions rope;
  rope.repeats = std::max(rope.repeats, options.bench.repeats);
  std::cout << "\nRoPE of q and k (kernels/rope), per call: in a CUDA graph and launched eagerly\n"
            << std::left << std::setw(34) << "shape" << std::right << std::setw(12) << "graph us" << std::setw(10)
            << "GB/s" << std::setw(12) << "torch us" << std::setw(8) << "ratio" << std::setw(12) << "eager us"
            << std::setw(12) << "torch us" << std::setw(8) << "ratio\n";
  for (const auto& row : prime::eval::run_rope_bench(rope, device)) {
    std::cout << std::left << std::setw(34) << row.shape << std::right << std::fixed << std::setprecision(2)
              << std::setw(12) << row.kernel_graph_us << std::setprecision(1) << std::setw(10) << row.kernel_graph_gbps
              << std::setprecision(2) << std::setw(12) << row.torch_graph_us << std::setw(7)
              << ratio(row.kernel_graph_us, row.torch_graph_us) << "x" << std::setw(12) << row.kernel_eager_us
              << std::setw(12) << row.torch_eager_us << std::setw(7) << ratio(row.kernel_eager_us, row.torch_eager_us)
              << "x\n";
  }
  std::cout << "\nq_norm + k_norm + RoPE at a decode step (kernels/rope), per call in a CUDA graph: one launch vs the "
            << "norms' and rotation's kernels vs their torch forms\n"
            << std::left << std::setw(34) << "shape" << std::right << std::setw(12) << "fused us" << std::setw(14)
            << "separate us" << std::setw(8) << "ratio" << std::setw(12) << "torch us" << std::setw(8) << "ratio\n";
  for (const auto& row : prime::eval::run_rope_norm_bench(rope, device)) {
    std::cout << std::left << std::setw(34) << row.shape << std::right << std::fixed << std::setprecision(2)
              << std::setw(12) << row.fused_graph_us << std::setw(14) << row.separate_graph_us << std::setw(7)
              << ratio(row.fused_graph_us, row.separate_graph_us) << "x" << std::setw(12) << row.torch_graph_us
              << std::setw(7) << ratio(row.fused_graph_us, row.torch_graph_us) << "x\n";
  }
}

void run_ssm(SsmOptions& options) {
  const at::Device device = finish_ssm_options(options);
  std::cout << "device " << device << "\n" << std::left << std::setw(6) << "type" << std::setw(30) << "(B,T,H,D) dtype"
            << std::right << std::setw(12) << "fwd ms" << std::setw(14) << "fwd+bwd ms" << "\n";
  for (const auto& row : prime::eval::run_ssm_bench(options.bench, device))
    std::cout << std::left << std::setw(6) << row.type << std::setw(30) << row.shape << std::right << std::fixed
              << std::setprecision(2) << std::setw(12) << row.forward_ms << std::setw(14) << row.forward_backward_ms
              << "\n";
}

struct DecodeOptions {
  prime::eval::DecodeBenchOptions bench;
  std::vector<std::string> models;
  std::string device = "auto";
  std::string dtype = "bf16";
  std::string json;
  bool force = false;
  double hbm_gbps = 0;  // 0: util/device_info.h's floor_bandwidth_gbps for the device
};

void add_decode_command(CLI::App& app, DecodeOptions& options) {
  CLI::App* command = app.add_subcommand(
      "decode", "prefill P tokens, decode N for batch B: tok/s, cache bytes per sequence, HBM traffic floor");
  command->add_option("--model", options.models, "model specs, benched in turn; ratios are vs the first (repeatable)")
      ->required()->group("Inputs");
  command->add_option("--mode", options.bench.modes,
                      "decode modes, each run per point: eager (growing cache), static (static cache), graph (static "
                      "cache, CUDA graph per step; runs as static where impossible) (default eager,graph)")
      ->delimiter(',')->group("Measurement");
  CLI::Option* batch =
      command->add_option("--batch", options.bench.batches, "batch sizes (default 1)")->delimiter(',')
          ->check(prime::positive_number())->group("Shape");
  CLI::Option* fit = command->add_flag("--fit-batch", options.bench.fit_batch,
                                       "per prompt length, the largest batch whose caches fit next to the weights "
                                       "(measured per sequence; retried at 7/8 on out-of-memory)")
                         ->excludes(batch)->group("Shape");
  command->add_option("--memory-gib", options.bench.memory_gib,
                      "memory --fit-batch fills, GiB (default: the CUDA device's; required on the CPU)")
      ->needs(fit)->check(prime::positive_number())->group("Shape");
  command->add_option("--prompt", options.bench.prompts, "prompt lengths P (default 512)")->delimiter(',')
      ->check(prime::positive_number())->group("Shape");
  command->add_option("--new-tokens", options.bench.new_tokens, "timed decode steps N (default 32)")
      ->check(prime::positive_number())->group("Shape");
  command->add_option("--warmup", options.bench.warmup, "untimed decode steps first (default 2)")
      ->check(prime::non_negative_number())->group("Measurement");
  command->add_option("--prefill-tokens", options.bench.prefill_tokens, "max B x T per prefill forward (default 8192)")
      ->check(prime::positive_number())->group("Measurement");
  command->add_option("--prefill-repeats", options.bench.prefill_repeats,
                      "timed prefills per point, each into a fresh cache; prefill t/s from the median (default 1; "
                      "--context synthetic has none)")
      ->check(prime::positive_number())->group("Measurement");
  command->add_option("--context", options.bench.context,
                      "prefill (run the model over the B x P prompt tokens) or synthetic (random keys, values and "
                      "states at length P: the same decode step without the prefill; default prefill)")
      ->check(CLI::IsMember({"prefill", "synthetic"}))->group("Shape");
  command->add_option("--max-batch-tokens", options.bench.max_batch_tokens, "skip (B, P) with B x P above this (default: none)")
      ->group("Shape");
  command->add_flag("--profile-step", options.bench.profile_step,
                    "the last warm-up step of each point inside a profiler range (ncu --profile-from-start off "
                    "--graph-profiling node: one step's kernels per point; at least 2 warm-up steps, 3 with a graph)")
      ->group("Measurement");
  command->add_option("--hbm-gbps", options.hbm_gbps,
                      "memory bandwidth for the floor, GB/s (default: the device's peak, an H200's 4800, others' "
                      "from their memory clock and bus width; 4800 on the CPU)")
      ->check(prime::positive_number())->group("Measurement");
  command->add_option("--device", options.device, "cpu, cuda, auto")->group("Measurement");
  command->add_option("--dtype", options.dtype, "weights dtype (default bf16)")->group("Measurement");
  command->add_option("--json", options.json, "also write the rows to this JSON file")->group("Output");
  command->add_flag("--force", options.force, "replace an existing --json file")->group("Output");
}

void run_decode(DecodeOptions& options) {
  prime::check_output_file(options.json, "--json", options.force);
  const prime::model::LoadOptions load{prime::parse_device(options.device), prime::parse_dtype_flag(options.dtype)};
  options.bench.hbm_gbps = prime::floor_bandwidth_gbps(options.hbm_gbps, load.device);
  std::cout << "device " << load.device << ", weights " << options.dtype << "\n";
  // Rows stream to stdout as they are measured; the full table follows at the end.
  const auto rows = prime::eval::run_decode_models(options.models, load, options.bench, &std::cout);
  std::cout << "\n";
  prime::eval::print_decode_table(rows, options.bench, std::cout);
  if (!options.json.empty())
    prime::eval::write_json_file(options.json, prime::eval::to_json(rows, options.bench), options.force, "--json");
}

void add_convert_command(CLI::App& app, prime::convert::ConvertBenchOptions& options) {
  CLI::App* command = app.add_subcommand(
      "convert", "prime-convert wall time next to cp of the same source files, and its peak RSS");
  command->add_option("--source", options.source, "synthetic:ALIAS[@k=v,...], written to disk once in bf16 (default synthetic:qwen3-8b)")
      ->group("Inputs");
  command->add_option("--layer", options.layer, "GKA, GDN, M2 or SWA (default GKA)")->group("Inputs");
  command->add_option("--ratio", options.ratio, "attention:SSM layers (default 1:3)")->group("Inputs");
  command->add_option("--init", options.init, "hmf, head, mambainllama or random (default hmf)")->group("Inputs");
  command->add_option("--work-dir", options.work_dir, "caches the source; copies and outputs go here (default /tmp/prime-bench)")
      ->group("Measurement");
  command->add_option("--rounds", options.rounds, "rounds of cp then prime-convert (default 3)")
      ->check(prime::positive_number())->group("Measurement");
  command->add_flag("--keep", options.keep_outputs, "keep the last copy and converted checkpoint")->group("Measurement");
  command->add_flag_callback("--no-evict", [&options] { options.evict = false; },
                             "leave the source in the page cache between runs")
      ->group("Measurement");
}

struct TrainCommand {
  prime::train::TrainBenchOptions bench;
  std::string stage = "align", align_layers = "none";
};

void add_train_command(CLI::App& app, TrainCommand& options) {
  prime::train::TrainOptions& train = options.bench.train;
  train.model = "synthetic:qwen3-8b+convert:GKA:1:3";
  train.teacher = "synthetic:qwen3-8b";
  train.seq_len = 4096;
  train.device = "auto";
  train.dtype = "auto";
  CLI::App* command = app.add_subcommand(
      "train", "one prime-train step of a hybrid: time, tokens/s, MFU, peak memory, share of the replaced layers");
  command->add_option("--model", train.model, "student model spec (default synthetic:qwen3-8b+convert:GKA:1:3)")
      ->group("Inputs");
  command->add_option("--teacher", train.teacher, "teacher source (default synthetic:qwen3-8b)")->group("Inputs");
  command->add_option("--stage", options.stage, "align, distill or pt (default align)")->group("Step");
  command->add_option("--align-layers", options.align_layers, "none, mixer or block (default none)")->group("Step");
  command->add_option("--train", train.train, "parameter groups (default: the stage's)")->group("Step");
  command->add_flag("--recompute", train.recompute, "per-layer activation recomputation")->group("Step");
  command->add_option("--batch", options.bench.batch, "sequences per step (default 1)")
      ->check(prime::positive_number())->group("Shape");
  command->add_option("--seq-len", train.seq_len, "tokens per sequence (default 4096)")
      ->check(prime::positive_number())->group("Shape");
  command->add_option("--device", train.device, "cpu, cuda, auto")->group("Measurement");
  command->add_option("--dtype", train.dtype, "auto (bf16 autocast on CUDA, fp32 on the CPU), bf16 or fp32")->group("Measurement");
  command->add_option("--repeats", options.bench.repeats, "timed steps, median reported (default 3)")->group("Measurement");
  command->add_option("--warmup", options.bench.warmup, "untimed steps first (default 1)")->group("Measurement");
  command->add_option("--peak-tflops", train.peak_tflops, "device bf16 peak for MFU (default: H100/H200 989)")
      ->group("Measurement");
  command->add_flag("--compare-kernels", options.bench.compare_kernels,
                    "time the step and the mixers with prime's kernels and with the torch-ops forms, same models, "
                    "and print the ratio")
      ->group("Measurement");
  command->add_flag("--profile", options.bench.profile,
                    "time nothing: one step after a warm-up, inside a profiler range (ncu --profile-from-start off)")
      ->group("Measurement");
}

void run_train(TrainCommand& options) {
  prime::train::TrainOptions& train = options.bench.train;
  train.stage = prime::train::parse_stage(options.stage);
  train.align_layers = prime::train::parse_align_layers(options.align_layers);
  prime::train::run_train_bench(options.bench, &std::cout);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"prime-bench: throughput measurements"};
  app.require_subcommand(1);
  TokenizerOptions tokenizer_options;
  add_tokenizer_command(app, tokenizer_options);
  SsmOptions ssm_options;
  add_ssm_command(app, ssm_options);
  SsmOptions kernel_options;  // every type by default; those without kernels are skipped
  add_ssm_command(app, kernel_options, "kernels",
                  "prime's CUDA kernels vs the torch-ops forms of the SSM cores, side by side (CUDA only)")
      ->add_flag("--profile", kernel_options.profile,
                 "time nothing: run each type's cores on the kernels once after a warm-up, inside a profiler range "
                 "(ncu --profile-from-start off, nsys --capture-range=cudaProfilerApi)")
      ->group("Measurement");
  DecodeOptions decode_options;
  add_decode_command(app, decode_options);
  prime::convert::ConvertBenchOptions convert_options;
  add_convert_command(app, convert_options);
  TrainCommand train_options;
  add_train_command(app, train_options);
  if (auto exit_code = prime::parse_command_line(app, "prime-bench", argc, argv)) return *exit_code;
  return prime::run_command("prime-bench", [&] {
    if (app.got_subcommand("tokenizer")) run_tokenizer(tokenizer_options);
    if (app.got_subcommand("ssm")) run_ssm(ssm_options);
    if (app.got_subcommand("kernels")) run_kernels(kernel_options);
    if (app.got_subcommand("decode")) run_decode(decode_options);
    if (app.got_subcommand("train")) run_train(train_options);
    if (app.got_subcommand("convert"))
      std::cout << prime::convert::format_convert_bench(prime::convert::run_convert_bench(convert_options, std::cerr),
                                                        convert_options);
  });
}
