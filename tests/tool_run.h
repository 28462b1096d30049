// Running the built command-line tools from tests: a tool's exit status, stdout and
// stderr, captured through files in a fresh temporary directory.
#pragma once

#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace testing_util {

// The tools run with OpenMP's passive wait policy: CTest runs suites side by side on
// two cores, where spinning OpenMP threads slow every process down several times. The
// results do not depend on it.
inline const std::string kToolEnv = "OMP_WAIT_POLICY=passive ";

struct ToolRun {
  int status;  // the exit status; -1 when the shell could not run it or a signal ended it
  std::string out, err;
};

// The whole file (empty when it cannot be read).
inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Runs `bin_dir/tool args` through the shell (args may hold quoting and redirections).
inline ToolRun run_tool_in(const std::string& bin_dir, const std::string& tool, const std::string& args) {
  const std::string dir = temp_dir();
  const std::string cmd = kToolEnv + bin_dir + "/" + tool + " " + args + " > " + dir + "/out 2> " + dir + "/err";
  const int rc = std::system(cmd.c_str());
  return {rc == -1 || !WIFEXITED(rc) ? -1 : WEXITSTATUS(rc), slurp(dir + "/out"), slurp(dir + "/err")};
}

// One JSON value per non-empty line.
inline std::vector<nlohmann::json> json_lines(const std::string& text) {
  std::vector<nlohmann::json> v;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) v.push_back(nlohmann::json::parse(line));
  return v;
}

}  // namespace testing_util
