// prime-eval: run a model (Transformer or hybrid) on token ids: dump logits, greedy-generate.
#include <CLI/CLI.hpp>

#include <ATen/core/grad_mode.h>

#include <iostream>
#include <sstream>

#include "eval/generate.h"
#include "io/tensor_file.h"
#include "model/load_model.h"
#include "util/cli.h"
#include "util/error.h"

namespace {

std::vector<int64_t> parse_ids(const std::string& text) {
  std::vector<int64_t> ids;
  std::stringstream items(text);
  std::string item;
  while (std::getline(items, item, ',')) {
    try {
      size_t used = 0;
      ids.push_back(std::stoll(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw prime::user_error("--token-ids: '", item, "' is not an integer");
    }
  }
  if (ids.empty()) throw prime::user_error("--token-ids is empty");
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"prime-eval: evaluate a Transformer or hybrid checkpoint"};
  std::string model_spec, token_ids = "1,2,3,4", dump_logits, device_name = "auto", dtype_name = "fp32";
  int64_t generate = 0;
  app.add_option("--model", model_spec, "checkpoint dir, known alias, or synthetic:ALIAS[@k=v,...]")
      ->required()->group("Model");
  app.add_option("--device", device_name, "cpu, cuda, cuda:N or auto")->group("Model");
  app.add_option("--dtype", dtype_name, "weights dtype: fp32, bf16, fp16")->group("Model");
  app.add_option("--token-ids", token_ids, "comma-separated input token ids")->group("Input");
  app.add_option("--dump-logits", dump_logits, "write float32 logits [T, vocab] as tensor 'logits' to this .safetensors")
      ->group("Output");
  app.add_option("--generate", generate, "greedy-decode N tokens after the input and print their ids")
      ->group("Output");
  CLI11_PARSE(app, argc, argv);

  return prime::run_command("prime-eval", [&] {
    if (generate < 0) throw prime::user_error("--generate must be >= 0");
    prime::model::LoadOptions options{prime::parse_device(device_name), prime::parse_dtype_flag(dtype_name)};
    auto loaded = prime::model::load_model(model_spec, options);
    const auto ids = parse_ids(token_ids);
    at::Tensor input = at::tensor(ids, at::kLong).unsqueeze(0);
    at::NoGradGuard no_grad;
    if (!dump_logits.empty()) {
      at::Tensor logits = loaded.model->forward(input).squeeze(0).to(at::kFloat).cpu().contiguous();
      prime::io::save_tensor_file(dump_logits, {{"logits", logits}}, {{"model", model_spec}});
      std::cout << "wrote logits [" << logits.size(0) << ", " << logits.size(1) << "] to " << dump_logits << "\n";
    }
    if (generate > 0) {
      prime::eval::GenerateOptions gen{generate, {}};
      const auto tokens = prime::eval::greedy_generate(*loaded.model, input, gen);
      std::cout << "generated:";
      for (int64_t token : tokens.front()) std::cout << " " << token;
      std::cout << "\n";
    }
    if (dump_logits.empty() && generate == 0) {
      at::Tensor logits = loaded.model->forward(input).to(at::kFloat);
      at::Tensor next = logits.select(1, logits.size(1) - 1).argmax(-1);
      std::cout << "next token: " << next.item<int64_t>() << "\n";
    }
  });
}
