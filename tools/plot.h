// Training curves and confusion matrices as PNG files, drawn by gnuplot.
//
// Why gnuplot (Debian's gnuplot-nox, pngcairo terminal): it is a maintained, widely
// packaged plotting program whose cairo output is antialiased and readable; it runs as
// a separate process, so a plotting failure can never take the training process down
// with it, and it needs no global state, exit() handler or drawing code in the engine
// (PLplot, the in-process alternative, keeps a global stream and exits the process on
// some errors unless a handler is installed). Each plot is a self-contained script (the
// data inline as datablocks) run as `gnuplot script`; the image is written to a
// temporary file renamed into place, so a reader never sees a half-written PNG.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace plot {

// True when `gnuplot` can be run (cached after the first call).
bool gnuplot_available();

struct Series {
  std::string title;
  std::vector<double> y;  // one value per x
};

struct CurvesPlot {
  std::string title;
  std::vector<double> x;  // epochs
  std::string x_label = "epoch";
  // Left panel (e.g. losses) and right panel (e.g. accuracies in %).
  std::string left_title, left_label, right_title, right_label;
  std::vector<Series> left, right;
  double right_min = 0, right_max = 100;  // fixed range of the right panel
  double right_reference = -1;            // a dashed horizontal line (chance level); <0: none
  std::string right_reference_title;
};

// Throws engine::Error naming the path when gnuplot is missing or fails.
void write_curves_png(const std::string& path, const CurvesPlot& plot);

// counts[true][predicted]; cells coloured by the fraction of their row, labelled with
// the count; class names on both axes.
void write_confusion_png(const std::string& path, const std::string& title, const std::vector<std::string>& classes,
                         const std::vector<std::vector<int64_t>>& counts);

}  // namespace plot
