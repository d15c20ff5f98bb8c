// mil: the command-line front end. Subcommands live in their own files (cli/*.cpp).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"MIL: serve one Llama-family base model with many LoRA adapters"};
  app.require_subcommand(1);
  mil::cli::add_generate_command(app);
  mil::cli::add_bench_command(app);
  mil::cli::add_info_command(app);
  mil::cli::add_tokenize_command(app);
  mil::cli::add_serve_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {  // mil::Error and the standard library's (filesystem, ...)
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
