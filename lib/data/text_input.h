// Reading documents out of corpus files: .txt, .jsonl (a string field per line), either of them
// xz-compressed (.txt.xz, .jsonl.xz; decompressed by streaming through `xz -dc`, Debian
// xz-utils, so libprime needs no liblzma).
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

namespace prime::data {

// How a .txt file is cut into documents (each document is followed by EOS in a shard).
enum class TxtDocuments {
  kFile,       // the whole file, byte for byte, is one document (books, WikiText)
  kParagraph,  // maximal runs of non-blank lines, joined by "\n" (blank = only spaces/tabs/\r)
  kLine,       // every non-blank line, without its "\n"
};
TxtDocuments parse_txt_documents(const std::string& name);  // "file" | "paragraph" | "line"

enum class InputFormat { kText, kJsonl };
// From the name: *.jsonl / *.jsonl.xz / *.json.xz -> kJsonl, anything else -> kText.
InputFormat input_format(const std::string& path);
bool is_xz(const std::string& path);

// A file's bytes as a stream, decompressed on the fly when it ends in .xz. The xz child is
// reaped (and killed if still running) on destruction; close() reports its failure.
class ByteStream {
 public:
  explicit ByteStream(const std::string& path);
  ByteStream(const ByteStream&) = delete;
  ByteStream& operator=(const ByteStream&) = delete;
  ~ByteStream();
  // Up to `size` bytes; 0 at the end. UserError on a read error.
  size_t read(char* out, size_t size);
  // Next line without its "\n"; false at the end (a last line without "\n" is still a line).
  bool next_line(std::string& line);
  // Bytes handed out so far by read() and next_line() (newlines included).
  uint64_t consumed() const { return consumed_; }
  // Waits for the decompressor; UserError when it failed (corrupt or truncated .xz).
  void close();

 private:
  size_t read_raw(char* out, size_t size);
  std::string path_;
  std::FILE* file_ = nullptr;
  int child_ = -1;      // xz pid, or -1
  int child_err_ = -1;  // its stderr, for the error message
  std::string pending_;
  size_t pending_pos_ = 0;
  bool eof_ = false;
  uint64_t consumed_ = 0;
};

// Uncompressed size in bytes: the file size, or what `xz --robot --list` says for .xz (0 when it
// cannot tell). Used for progress totals only.
uint64_t uncompressed_size(const std::string& path);

struct DocumentOptions {
  TxtDocuments txt_documents = TxtDocuments::kFile;
  std::string text_field = "text";  // jsonl
};

// Calls on_document(text) for every document of `path`, in order. Empty documents (jsonl "" or
// whitespace-only paragraphs/lines) are skipped. UserError names file:line for jsonl problems
// (invalid JSON, not an object, missing or non-string field). on_document also gets how many
// (uncompressed) bytes of the file have been consumed so far, for progress.
void read_documents(const std::string& path, const DocumentOptions& options,
                    const std::function<void(std::string&& text, uint64_t consumed)>& on_document);

}  // namespace prime::data
