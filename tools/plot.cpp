#include "tools/plot.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/error.h"

extern char** environ;

namespace plot {

namespace {

// A gnuplot double-quoted string literal.
std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + "\"";
}

std::string number(double v) {
  if (!std::isfinite(v)) return "NaN";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

// Runs `gnuplot script` with stdout and stderr to `log`; returns the exit status, or
// -1 when it cannot be started.
int run_gnuplot(const std::vector<std::string>& args, const std::string& log) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>("gnuplot"));
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, "gnuplot", &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return -1;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Writes the script next to the target, runs gnuplot on it (its output goes to the
// temporary PNG named in the script by {{OUT}}), and renames the PNG into place.
void render(const std::string& path, int width, int height, const std::string& script_body) {
  const std::string tag = ".tmp-" + std::to_string(::getpid());
  const std::string script = path + tag + ".gp", png = path + tag + ".png", log = path + tag + ".log";
  auto cleanup = [&] {
    std::remove(script.c_str());
    std::remove(png.c_str());
    std::remove(log.c_str());
  };
  {
    std::ofstream f(script);
    f << "set terminal pngcairo noenhanced font \"sans,11\" size " << width << "," << height << "\n";
    f << "set output " << quoted(png) << "\n" << script_body << "\nunset output\n";
    if (!f) {
      cleanup();
      throw engine::Error(path + ": cannot write the plot (is the folder writable?)");
    }
  }
  const int rc = run_gnuplot({script}, log);
  if (rc != 0) {
    std::string err = slurp(log);
    cleanup();
    if (rc == -1 || rc == 127)
      throw engine::Error(path + ": gnuplot is not installed (Debian: apt-get install gnuplot-nox; setup.sh does)");
    if (err.size() > 400) err = err.substr(0, 400) + "...";
    throw engine::Error(path + ": gnuplot failed (exit " + std::to_string(rc) + "): " + err);
  }
  std::error_code ec;
  if (!std::filesystem::is_regular_file(png, ec) || std::filesystem::file_size(png, ec) == 0) {
    cleanup();
    throw engine::Error(path + ": gnuplot wrote no image");
  }
  std::filesystem::rename(png, path, ec);
  const std::string why = ec ? ec.message() : "";
  cleanup();
  if (!why.empty()) throw engine::Error(path + ": cannot move the plot into place: " + why);
}

}  // namespace

bool gnuplot_available() {
  static const bool ok = [] {
    const std::string log = "/dev/null";
    return run_gnuplot({"-V"}, log) == 0;
  }();
  return ok;
}

void write_curves_png(const std::string& path, const CurvesPlot& p) {
  std::ostringstream s;
  const size_t n = p.x.size();
  ENGINE_CHECK(n > 0, path, ": no points to plot");
  // One datablock per panel: x, then one column per series.
  auto block = [&](const char* name, const std::vector<Series>& series) {
    s << "$" << name << " << EOD\n";
    for (size_t i = 0; i < n; ++i) {
      s << number(p.x[i]);
      for (const Series& sr : series) s << " " << (i < sr.y.size() ? number(sr.y[i]) : "NaN");
      s << "\n";
    }
    s << "EOD\n";
  };
  block("L", p.left);
  block("R", p.right);
  const double x0 = p.x.front(), x1 = p.x.back();
  const std::string xrange = x1 > x0 ? "[" + number(x0) + ":" + number(x1) + "]" : "[" + number(x0 - 0.5) + ":" + number(x0 + 0.5) + "]";
  s << "set multiplot layout 1,2 title " << quoted(p.title) << " font \",13\"\n";
  s << "set grid\nset key below horizontal nobox samplen 2 width -2\nset bmargin 5.5\nset xlabel " << quoted(p.x_label) << "\n";
  s << "set xrange " << xrange << "\n";
  if (x1 - x0 <= 20) s << "set xtics 1\n";
  else s << "set xtics auto\n";
  s << "set style line 1 lw 2 pt 7 ps 0.8 lc rgb '#1f77b4'\n"
       "set style line 2 lw 2 pt 5 ps 0.8 lc rgb '#d62728'\n"
       "set style line 3 lw 2 pt 9 ps 0.8 lc rgb '#2ca02c'\n"
       "set style line 4 lw 2 pt 11 ps 0.8 lc rgb '#9467bd'\n";
  auto panel = [&](const char* name, const std::vector<Series>& series, const std::string& title,
                   const std::string& label) {
    s << "set title " << quoted(title) << "\nset ylabel " << quoted(label) << "\n";
    s << "plot ";
    for (size_t k = 0; k < series.size(); ++k) {
      if (k) s << ", ";
      s << "$" << name << " using 1:" << k + 2 << " with linespoints ls " << (k % 4) + 1 << " title "
        << quoted(series[k].title);
    }
    if (name[0] == 'R' && p.right_reference >= 0)
      s << ", " << number(p.right_reference) << " with lines dt 2 lw 1.5 lc rgb '#555555' title "
        << quoted(p.right_reference_title);
    s << "\n";
  };
  s << "set yrange [0:*]\n";
  panel("L", p.left, p.left_title, p.left_label);
  s << "set yrange [" << number(p.right_min) << ":" << number(p.right_max) << "]\n";
  panel("R", p.right, p.right_title, p.right_label);
  s << "unset multiplot\n";
  render(path, 1200, 540, s.str());
}

void write_confusion_png(const std::string& path, const std::string& title, const std::vector<std::string>& classes,
                         const std::vector<std::vector<int64_t>>& counts) {
  const size_t k = classes.size();
  ENGINE_CHECK(k > 0 && counts.size() == k, path, ": confusion matrix of ", counts.size(), " rows for ", k, " classes");
  size_t longest = 0;
  for (const std::string& c : classes) longest = std::max(longest, c.size());
  const int cell = k <= 10 ? 70 : k <= 30 ? 30 : 14;
  const int margin = 90 + static_cast<int>(std::min<size_t>(longest, 40)) * 7;
  const int width = margin + cell * static_cast<int>(k) + 150;
  // Title above, rotated class names and the axis label below.
  const int height = 110 + cell * static_cast<int>(k) + 70 + static_cast<int>(std::min<size_t>(longest, 40)) * 6;
  std::ostringstream s;
  // Cells: x = predicted, y = true; colour = fraction of the row, label = count.
  s << "$M << EOD\n";
  for (size_t t = 0; t < k; ++t) {
    ENGINE_CHECK(counts[t].size() == k, path, ": confusion row ", t, " has ", counts[t].size(), " entries");
    int64_t row = 0;
    for (int64_t v : counts[t]) row += v;
    for (size_t pr = 0; pr < k; ++pr)
      s << pr << " " << t << " " << number(row > 0 ? static_cast<double>(counts[t][pr]) / static_cast<double>(row) : 0.0)
        << " " << counts[t][pr] << "\n";
  }
  s << "EOD\n";
  s << "set title " << quoted(title) << " font \",13\"\n";
  s << "set xlabel \"predicted class\"\nset ylabel \"true class\"\n";
  s << "set xrange [-0.5:" << k - 0.5 << "]\nset yrange [" << k - 0.5 << ":-0.5]\n";
  s << "set size ratio -1\nset tics nomirror scale 0\nunset key\n";
  s << "set xtics rotate by 40 right (";
  for (size_t i = 0; i < k; ++i) s << (i ? ", " : "") << quoted(classes[i]) << " " << i;
  s << ")\nset ytics (";
  for (size_t i = 0; i < k; ++i) s << (i ? ", " : "") << quoted(classes[i]) << " " << i;
  s << ")\n";
  s << "set cbrange [0:1]\nset cblabel \"fraction of the true class\"\n";
  s << "set palette defined (0 '#ffffff', 0.5 '#6baed6', 1 '#08306b')\n";
  const bool labels = k <= 30;
  s << "plot $M using 1:2:3 with image";
  if (labels)
    s << ", $M using 1:2:(sprintf(\"%d\", $4)):($3 > 0.55 ? 0xffffff : 0x000000) with labels tc rgb variable"
      << (k <= 10 ? " font \",12\"" : " font \",8\"");
  s << "\n";
  render(path, width, height, s.str());
}

}  // namespace plot
