// Token shards (layout, mmap reader, refusal of bad files), prime-data tokenize (ids equal
// Tokenizer::encode per document with EOS after each), pack (windows, document positions) and
// inspect, through the library and the CLI.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <cstring>

#include "data/inspect_shard.h"
#include "data/pack.h"
#include "data/tokenize.h"
#include "data/tokenizer_spec.h"
#include "data/token_shard.h"
#include "test_data_util.h"
#include "test_helpers.h"
#include "util/error.h"

using namespace prime;
using Catch::Matchers::Contains;

namespace {

const io::Tokenizer& gpt2() {
  static const io::Tokenizer tokenizer =
      io::Tokenizer::from_json_file((test::shared_dir() / "data/tokenizers/gpt2-bytelevel-bpe.tokenizer.json").string());
  return tokenizer;
}

void write_shard(const std::string& path, const std::vector<uint32_t>& ids, io::TokenShardHeader header) {
  io::TokenShardWriter writer(path, header);
  writer.append(ids);
  writer.finish();
}

// What tokenize must produce: encode(document) + EOS, document after document.
std::vector<uint32_t> expected_ids(const std::vector<std::string>& documents) {
  std::vector<uint32_t> ids;
  for (const auto& document : documents) {
    for (int32_t id : gpt2().encode(document, false)) ids.push_back(static_cast<uint32_t>(id));
    ids.push_back(static_cast<uint32_t>(*gpt2().eos_id()));
  }
  return ids;
}

}  // namespace

TEST_CASE("token shard: u16 and u32 round trip through the mmap reader", "[data]") {
  test::ScratchDir dir("shard");
  for (uint32_t width : {2u, 4u}) {
    const std::string path = dir.file("ids" + std::to_string(width) + ".tok");
    std::vector<uint32_t> ids;
    for (uint32_t i = 0; i < 1000; ++i) ids.push_back((i * 7919u) % (width == 2 ? 65536u : 200000u));
    io::TokenShardHeader header;
    header.width = width;
    header.source_bytes = 4321;
    header.documents = 3;
    header.eos_id = 7;
    header.row_length = 100;
    write_shard(path, ids, header);
    // The documented byte layout: 64-byte header, little-endian fields, then the body.
    const std::string bytes = test::read_bytes(path);
    REQUIRE(bytes.size() == 64 + 1000 * width);
    CHECK(bytes.substr(0, 8) == "PRIMETOK");
    CHECK(static_cast<uint8_t>(bytes[12]) == width);
    CHECK(static_cast<uint8_t>(bytes[16]) == (1000 & 0xFF));
    CHECK(static_cast<uint8_t>(bytes[17]) == (1000 >> 8));
    CHECK(static_cast<uint8_t>(bytes[48]) == 100);

    const auto shard = io::TokenShard::open(path);
    CHECK(shard.size() == 1000);
    CHECK(shard.rows() == 10);
    CHECK(shard.header().source_bytes == 4321);
    CHECK(shard.header().documents == 3);
    CHECK(shard.header().eos_id == 7);
    CHECK(test::shard_ids(shard) == ids);
    CHECK(shard.at(999) == ids[999]);
    at::Tensor view = shard.tensor();
    CHECK(view.sizes() == at::IntArrayRef({10, 100}));
    CHECK(view.scalar_type() == (width == 2 ? at::kUInt16 : at::kUInt32));
    CHECK(view.to(at::kLong).flatten().equal(shard.slice(0, 1000)));
    at::Tensor slice = shard.slice(990, 10);
    CHECK(slice[3].item<int64_t>() == ids[993]);
    // Seeded windows: the same seed gives the same windows, each a real slice of the body.
    at::Tensor a = shard.sample_windows(5, 16, 42), b = shard.sample_windows(5, 16, 42), c = shard.sample_windows(5, 16, 43);
    CHECK(a.equal(b));
    CHECK_FALSE(a.equal(c));
    for (int64_t row = 0; row < 5; ++row) {
      const int64_t first = a[row][0].item<int64_t>();
      bool found = false;
      for (int64_t offset = 0; offset + 16 <= 1000 && !found; ++offset)
        found = ids[offset] == first && shard.slice(offset, 16).equal(a[row]);
      CHECK(found);
    }
  }
  // The view outlives the TokenShard object that made it (it holds the mapping).
  at::Tensor kept;
  {
    kept = io::TokenShard::open(dir.file("ids4.tok")).tensor();
  }
  CHECK(kept.numel() == 1000);
  CHECK(kept.flatten()[1].item<int64_t>() == 7919);
}

TEST_CASE("token shard: bad headers and truncated bodies are refused", "[data][bad-input]") {
  test::ScratchDir dir("badshard");
  const std::string good = dir.file("good.tok");
  io::TokenShardHeader header;
  header.width = 2;
  write_shard(good, {1, 2, 3, 4, 5, 6}, header);
  const std::string bytes = test::read_bytes(good);
  auto variant = [&](const std::string& name, std::string content) {
    test::write_text(dir.file(name), content);
    return dir.file(name);
  };
  auto patched = [&](size_t offset, uint8_t value) {
    std::string copy = bytes;
    copy[offset] = static_cast<char>(value);
    return copy;
  };
  CHECK_THROWS_WITH(io::TokenShard::open(variant("trunc.tok", bytes.substr(0, bytes.size() - 1))),
                    Contains("truncated token shard"));
  CHECK_THROWS_WITH(io::TokenShard::open(variant("extra.tok", bytes + "xx")), Contains("unexpected bytes"));
  CHECK_THROWS_WITH(io::TokenShard::open(variant("short.tok", bytes.substr(0, 40))), Contains("shorter than the 64-byte header"));
  CHECK_THROWS_WITH(io::TokenShard::open(variant("empty.tok", "")), Contains("shorter than"));
  CHECK_THROWS_WITH(io::TokenShard::open(variant("magic.tok", patched(0, 'X'))), Contains("bad magic"));
  CHECK_THROWS_WITH(io::TokenShard::open(variant("version.tok", patched(8, 9))), Contains("version 9"));
  CHECK_THROWS_WITH(io::TokenShard::open(variant("width.tok", patched(12, 3))), Contains("width 3"));
  CHECK_THROWS_WITH(io::TokenShard::open(variant("kind.tok", patched(52, 5))), Contains("kind 5"));
  CHECK_THROWS_WITH(io::TokenShard::open(variant("rows.tok", patched(48, 4))), Contains("not a multiple of its row length"));
  CHECK_THROWS_WITH(io::TokenShard::open(variant("count.tok", patched(23, 0xFF))), Contains("count"));
  CHECK_THROWS_AS(io::TokenShard::open(dir.file("missing.tok")), UserError);
  CHECK_THROWS_AS(io::TokenShard::open(dir.path()), UserError);
}

TEST_CASE("token shard writer: atomic, and refuses ids that do not fit", "[data][bad-input]") {
  test::ScratchDir dir("writer");
  {
    io::TokenShardHeader header;
    header.width = 2;
    io::TokenShardWriter writer(dir.file("a.tok"), header);
    writer.append(std::vector<uint32_t>{1, 2, 3});
    CHECK_THROWS_WITH(writer.append(std::vector<uint32_t>{70000}), Contains("does not fit"));
    // Destroyed without finish(): nothing is left, not even the temporary file.
  }
  CHECK(dir.listing().empty());
  io::TokenShardHeader header;
  header.vocab_size = 10;
  io::TokenShardWriter writer(dir.file("b.tok"), header);
  CHECK_THROWS_AS(writer.append(std::vector<uint32_t>{10}), UserError);
  CHECK(io::width_for_vocab(65536) == 2);
  CHECK(io::width_for_vocab(65537) == 4);
  CHECK(io::width_for_vocab(151665) == 4);
}

TEST_CASE("tokenize: .txt, paragraphs, lines, .jsonl and .txt.xz give encode(document) + EOS", "[data]") {
  test::ScratchDir dir("tokenize");
  const std::string book = "The first line of a book.\nIt goes on, with digits 12345 and \xe2\x80\x9cquotes\xe2\x80\x9d.\n\n  "
                           "A second paragraph <|endoftext|> with a literal special token.\n \n\nThird.\n";
  test::write_text(dir.file("book.txt"), book);
  test::write_text(dir.file("docs.jsonl"), "{\"text\": \"Hello world\", \"id\": 1}\n\n{\"text\": \"caf\\u00e9 \\ud83d\\ude00  spaces\"}\n"
                                            "{\"text\": \"\"}\n{\"text\": \"last\\nline\"}");
  REQUIRE(std::system(("xz -k -c " + dir.file("book.txt") + " > " + dir.file("book2.txt.xz")).c_str()) == 0);

  data::TokenizeOptions options;
  options.inputs = {dir.file("book.txt"), dir.file("docs.jsonl"), dir.file("book2.txt.xz")};
  options.out = dir.file("all.tok");
  auto report = data::tokenize_files(gpt2(), options);
  const std::vector<std::string> documents = {book, "Hello world", "caf\xc3\xa9 \xf0\x9f\x98\x80  spaces", "last\nline", book};
  auto shard = io::TokenShard::open(options.out);
  CHECK(test::shard_ids(shard) == expected_ids(documents));
  CHECK(shard.header().documents == 5);
  CHECK(shard.header().eos_id == 50256);
  CHECK(shard.header().width == 2);
  CHECK(shard.header().vocab_size == gpt2().vocab_size());  // 50257 + added tokens
  int64_t bytes = 0;
  for (const auto& document : documents) bytes += static_cast<int64_t>(document.size());
  CHECK(shard.header().source_bytes == static_cast<uint64_t>(bytes));
  CHECK(report.tokens == shard.size());
  CHECK(report.documents == 5);

  // Many tiny batches over several threads: the same ids, in the same order.
  options.threads = 3;
  options.batch_bytes = 1;
  options.out = dir.file("threads.tok");
  data::tokenize_files(gpt2(), options);
  CHECK(test::shard_ids(io::TokenShard::open(options.out)) == test::shard_ids(shard));

  // One shard per input.
  options.out.clear();
  options.out_dir = dir.path().string();
  report = data::tokenize_files(gpt2(), options);
  REQUIRE(report.outputs.size() == 3);
  CHECK(report.outputs[2] == dir.file("book2.tok"));
  CHECK(test::shard_ids(io::TokenShard::open(dir.file("docs.tok"))) == expected_ids({documents[1], documents[2], documents[3]}));

  // Paragraphs (blank-line separated, whitespace-only lines are blank) and lines.
  options = {};
  options.inputs = {dir.file("book.txt")};
  options.out = dir.file("paragraphs.tok");
  options.documents.txt_documents = data::TxtDocuments::kParagraph;
  data::tokenize_files(gpt2(), options);
  CHECK(test::shard_ids(io::TokenShard::open(options.out)) ==
        expected_ids({"The first line of a book.\nIt goes on, with digits 12345 and \xe2\x80\x9cquotes\xe2\x80\x9d.",
                      "  A second paragraph <|endoftext|> with a literal special token.", "Third."}));
  options.documents.txt_documents = data::TxtDocuments::kLine;
  options.out = dir.file("lines.tok");
  options.parse_special = true;
  data::tokenize_files(gpt2(), options);
  std::vector<uint32_t> lines;
  for (const char* line : {"The first line of a book.", "It goes on, with digits 12345 and \xe2\x80\x9cquotes\xe2\x80\x9d.",
                           "  A second paragraph <|endoftext|> with a literal special token.", "Third."}) {
    for (int32_t id : gpt2().encode(line, true)) lines.push_back(static_cast<uint32_t>(id));
    lines.push_back(50256);
  }
  CHECK(test::shard_ids(io::TokenShard::open(options.out)) == lines);
}

TEST_CASE("tokenize: bad inputs fail with a clear UserError and write nothing", "[data][bad-input]") {
  test::ScratchDir dir("tokenize_bad");
  test::write_text(dir.file("ok.txt"), "fine text\n");
  test::write_text(dir.file("nofield.jsonl"), "{\"text\": \"a\"}\n{\"body\": \"b\"}\n");
  test::write_text(dir.file("notjson.jsonl"), "{\"text\": \"a\"}\nnot json\n");
  test::write_text(dir.file("number.jsonl"), "{\"text\": 5}\n");
  test::write_text(dir.file("broken.txt.xz"), "this is not xz data");
  data::TokenizeOptions options;
  options.out = dir.file("out.tok");
  auto fails_with = [&](std::vector<std::string> inputs, const std::string& message) {
    options.inputs = std::move(inputs);
    CHECK_THROWS_WITH(data::tokenize_files(gpt2(), options), Contains(message));
  };
  fails_with({dir.file("ok.txt"), dir.file("nofield.jsonl")}, "nofield.jsonl:2: no \"text\" field");
  fails_with({dir.file("notjson.jsonl")}, "notjson.jsonl:2: invalid JSON");
  fails_with({dir.file("number.jsonl")}, "is not a string");
  fails_with({dir.file("ok.txt"), dir.file("broken.txt.xz")}, "xz -dc");
  fails_with({dir.file("absent.txt")}, "no such file");
  fails_with({dir.path().string()}, "not a regular file");
  options.out_dir = dir.path().string();
  fails_with({dir.file("ok.txt")}, "exactly one of");
  options.out.clear();
  test::write_text(dir.file("sub_ok.txt"), "x");
  fails_with({dir.file("ok.txt"), dir.file("ok.txt")}, "would both be written");
  options.out_dir = dir.file("ok.txt");
  fails_with({dir.file("ok.txt")}, "exists and is not a directory");
  // Nothing was written: only the inputs are there.
  CHECK(dir.listing() == std::vector<std::string>{"broken.txt.xz", "nofield.jsonl", "notjson.jsonl", "number.jsonl",
                                                  "ok.txt", "sub_ok.txt"});
  data::TokenizerSpec spec;
  CHECK_THROWS_WITH(data::load_tokenizer(spec), Contains("no tokenizer given"));
  spec.tiktoken = dir.file("ok.txt");
  CHECK_THROWS_WITH(data::load_tokenizer(spec), Contains("--regex"));
  spec.preset = "nope";
  CHECK_THROWS_WITH(data::load_tokenizer(spec), Contains("unknown --tokenizer-preset"));
}

TEST_CASE("pack: fixed windows over the concatenated shards, with document positions", "[data]") {
  test::ScratchDir dir("pack");
  io::TokenShardHeader header;
  header.width = 2;
  header.eos_id = 0;
  header.vocab_size = 100;
  header.source_bytes = 230;
  write_shard(dir.file("a.tok"), {5, 6, 0, 7, 8, 9, 0}, header);
  header.source_bytes = 0;
  write_shard(dir.file("b.tok"), {10, 11, 0, 12, 13, 14, 15, 0, 16, 17}, header);
  data::PackOptions options;
  options.inputs = {dir.file("a.tok"), dir.file("b.tok")};
  options.out = dir.file("windows.tok");
  options.seq_len = 4;
  options.document_mask = true;
  const auto report = data::pack_shards(options);
  CHECK(report.windows == 4);
  CHECK(report.tokens_dropped == 1);
  CHECK(report.positions_out == dir.file("windows.pos.tok"));
  const auto windows = io::TokenShard::open(options.out);
  CHECK(windows.header().row_length == 4);
  CHECK(windows.rows() == 4);
  CHECK(test::shard_ids(windows) == std::vector<uint32_t>{5, 6, 0, 7, 8, 9, 0, 10, 11, 0, 12, 13, 14, 15, 0, 16});
  CHECK(windows.header().documents == 4);
  CHECK(windows.header().source_bytes == 230 * 16 / 17);
  const auto positions = io::TokenShard::open(report.positions_out);
  CHECK(positions.header().kind == io::ShardKind::kPositions);
  // Restart at each window start and right after each EOS.
  CHECK(test::shard_ids(positions) == std::vector<uint32_t>{0, 1, 2, 0, 0, 1, 2, 0, 0, 1, 0, 1, 0, 1, 2, 0});

  options.seq_len = 100;
  CHECK_THROWS_WITH(data::pack_shards(options), Contains("fewer than one window"));
  options.seq_len = 4;
  options.inputs = {report.positions_out};
  CHECK_THROWS_WITH(data::pack_shards(options), Contains("position ids"));
  header.eos_id = io::kNoEos;
  write_shard(dir.file("noeos.tok"), {1, 2, 3, 4}, header);
  options.inputs = {dir.file("noeos.tok")};
  CHECK_THROWS_WITH(data::pack_shards(options), Contains("no EOS"));
}

TEST_CASE("inspect: counts, histograms and decoded samples", "[data]") {
  test::ScratchDir dir("inspect");
  io::TokenShardHeader header;
  header.width = 2;
  header.eos_id = 50256;
  header.vocab_size = 50257;
  header.source_bytes = 40;
  header.documents = 2;
  std::vector<uint32_t> ids;
  for (int32_t id : gpt2().encode("hello hello hello world")) ids.push_back(static_cast<uint32_t>(id));
  ids.push_back(50256);
  ids.push_back(31373);
  ids.push_back(50256);
  write_shard(dir.file("s.tok"), ids, header);
  const auto shard = io::TokenShard::open(dir.file("s.tok"));
  const auto stats = data::shard_stats(shard, 3);
  CHECK(stats.count == static_cast<int64_t>(ids.size()));
  CHECK(stats.documents == 2);
  CHECK(stats.trailing == 0);
  CHECK(stats.longest_document == static_cast<int64_t>(ids.size()) - 2);
  REQUIRE(stats.top.size() == 3);
  CHECK(stats.top[0].second >= 2);
  std::ostringstream out;
  data::InspectOptions options;
  options.samples = 1;
  options.sample_tokens = 4;
  data::print_shard_report(shard, stats, &gpt2(), options, out);
  INFO(out.str());
  CHECK_THAT(out.str(), Contains("documents    2"));
  CHECK_THAT(out.str(), Contains("\" hello\""));
  CHECK_THAT(out.str(), Contains("sample 0 (4 tokens)"));
}

TEST_CASE("prime-data CLI: tokenize, inspect, pack, bad input exits 1 and writes nothing", "[data][cli]") {
  test::ScratchDir dir("data_cli");
  test::write_text(dir.file("a.txt"), "One paragraph.\n\nAnother one here.\n");
  const std::string tokenizer = "--tokenizer " + (test::shared_dir() / "data/tokenizers/gpt2-bytelevel-bpe.tokenizer.json").string();
  auto result = test::run_cli("prime-data tokenize " + dir.file("a.txt") + " " + tokenizer +
                              " --txt-documents paragraph --out " + dir.file("a.tok"));
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK_THAT(result.output, Contains("2 documents"));
  CHECK(test::shard_ids(io::TokenShard::open(dir.file("a.tok"))) == expected_ids({"One paragraph.", "Another one here."}));
  result = test::run_cli("prime-data inspect " + dir.file("a.tok") + " " + tokenizer + " --samples 1 --sample-tokens 3");
  REQUIRE(result.exit_code == 0);
  CHECK_THAT(result.output, Contains("elements     9"));
  result = test::run_cli("prime-data pack " + dir.file("a.tok") + " --seq-len 4 --document-mask --out " + dir.file("w.tok"));
  REQUIRE(result.exit_code == 0);
  CHECK(io::TokenShard::open(dir.file("w.pos.tok")).size() == 8);

  test::write_text(dir.file("bad.jsonl"), "{\"title\": \"x\"}\n");
  result = test::run_cli("prime-data tokenize " + dir.file("bad.jsonl") + " " + tokenizer + " --out " + dir.file("bad.tok"));
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("no \"text\" field"));
  result = test::run_cli("prime-data tokenize " + dir.file("nope.txt") + " " + tokenizer + " --out " + dir.file("bad.tok"));
  CHECK(result.exit_code == 1);
  test::write_text(dir.file("bad.jsonl"), std::string(100, 'x'));
  result = test::run_cli("prime-data inspect " + dir.file("bad.jsonl"));
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("bad magic"));
  result = test::run_cli("prime-data tokenize " + dir.file("a.txt") + " --out " + dir.file("bad.tok"));
  CHECK(result.exit_code == 1);
  CHECK_THAT(result.output, Contains("no tokenizer given"));
  CHECK_FALSE(std::filesystem::exists(dir.file("bad.tok")));
  CHECK(dir.listing().size() == 5);  // a.txt a.tok bad.jsonl w.tok w.pos.tok
}
