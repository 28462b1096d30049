// Reverse-mode autograd.
//
// An op that produces `out` from `inputs` calls record(); when gradients are enabled and
// some input requires one, out gets a Node holding a backward closure and one Edge per
// input: the producer Node of a non-leaf input, or the leaf itself. backward() walks the
// nodes in topological order from the root, hands each closure its output gradient and
// a mask of the inputs that need one (so a closure computes only those: with frozen
// weights, conv2d computes no weight gradient), and accumulates leaf gradients into
// `grad`. The graph is freed as it is consumed unless retain_graph is set.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace engine {

struct Edge {
  std::shared_ptr<Node> fn;           // producer of a non-leaf input
  std::shared_ptr<TensorImpl> leaf;   // or the leaf that accumulates the gradient
  bool needed() const { return fn != nullptr || leaf != nullptr; }
};

// (gradient of the output, which inputs need a gradient) -> one gradient per input;
// entries for inputs that need none may be undefined.
using BackwardFn = std::function<TensorList(const Tensor& grad_out, const std::vector<bool>& needs)>;

struct Node {
  std::string name;
  std::vector<Edge> next;
  BackwardFn backward;
  Shape out_shape;
};

// Whether ops record graphs (thread-local, on by default).
struct GradMode {
  static bool enabled();
  static void set_enabled(bool on);
};

// RAII scope in which no graph is recorded (like torch.no_grad()).
class NoGradGuard {
 public:
  NoGradGuard() : prev_(GradMode::enabled()) { GradMode::set_enabled(false); }
  ~NoGradGuard() { GradMode::set_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// True when grad mode is on and some input requires a gradient: the op must record.
bool needs_graph(const TensorList& inputs);

// Attaches a backward node to out if needs_graph(inputs); returns out.
Tensor record(Tensor out, const TensorList& inputs, const char* name, BackwardFn backward);

// The engine behind Tensor::backward.
void run_backward(const Tensor& root, const Tensor& grad_root, bool retain_graph);

}  // namespace engine
