#include "engine/autograd.h"

#include <unordered_map>
#include <unordered_set>

#include "engine/ops.h"

namespace engine {
namespace {
thread_local bool g_grad_enabled = true;

// Gradients are never modified in place by the engine, so a gradient may share
// storage with another (add's backward hands the same tensor to both inputs).
Tensor accumulate(const Tensor& acc, const Tensor& g) { return acc.defined() ? add(acc, g) : g.detach(); }

void check_grad(const Tensor& g, const Shape& shape, const std::string& where) {
  ENGINE_CHECK(g.shape() == shape, "backward of ", where, " produced a gradient of shape ",
               shape_str(g.shape()), " for an input of shape ", shape_str(shape));
}
}  // namespace

bool GradMode::enabled() { return g_grad_enabled; }
void GradMode::set_enabled(bool on) { g_grad_enabled = on; }

bool needs_graph(const TensorList& inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

Tensor record(Tensor out, const TensorList& inputs, const char* name, BackwardFn backward) {
  if (!needs_graph(inputs)) return out;
  auto node = std::make_shared<Node>();
  node->name = name;
  node->backward = std::move(backward);
  node->out_shape = out.shape();
  node->next.reserve(inputs.size());
  for (const Tensor& t : inputs) {
    Edge e;
    if (t.defined() && t.requires_grad()) {
      if (t.is_leaf())
        e.leaf = t.impl_ptr();
      else
        e.fn = t.grad_fn();
    }
    node->next.push_back(std::move(e));
  }
  out.impl_ptr()->grad_fn = std::move(node);
  return out;
}

void run_backward(const Tensor& root, const Tensor& grad_root, bool retain_graph) {
  ENGINE_CHECK(root.requires_grad(), "backward on a tensor that does not require grad (",
               root.str(), "): no input of the computation requires a gradient");
  Tensor g = grad_root;
  if (!g.defined()) {
    ENGINE_CHECK(root.numel() == 1, "backward() without a gradient needs a one-element tensor, got ",
                 root.str(), "; pass the upstream gradient");
    g = Tensor::full(root.shape(), 1.0, root.dtype(), root.device());
  } else {
    ENGINE_CHECK(g.shape() == root.shape() && g.dtype() == root.dtype() && g.device() == root.device(),
                 "backward: gradient ", g.str(), " does not match tensor ", root.str());
  }
  NoGradGuard no_grad;

  if (root.is_leaf()) {
    TensorImpl& leaf = *root.impl_ptr();
    leaf.grad = accumulate(leaf.grad ? Tensor(leaf.grad) : Tensor(), g).impl_ptr();
    return;
  }

  // Every node reachable from the root, and how many edges point at each.
  std::vector<std::shared_ptr<Node>> nodes;  // keeps nodes alive while edges are cleared
  std::unordered_map<Node*, int> deps;
  std::unordered_set<Node*> seen;
  std::vector<std::shared_ptr<Node>> stack{root.grad_fn()};
  seen.insert(root.grad_fn().get());
  while (!stack.empty()) {
    std::shared_ptr<Node> n = std::move(stack.back());
    stack.pop_back();
    nodes.push_back(n);
    for (const Edge& e : n->next) {
      if (!e.fn) continue;
      ++deps[e.fn.get()];
      if (seen.insert(e.fn.get()).second) stack.push_back(e.fn);
    }
  }

  std::unordered_map<Node*, Tensor> grads;
  grads[root.grad_fn().get()] = g;
  std::vector<Node*> ready{root.grad_fn().get()};
  while (!ready.empty()) {
    Node* n = ready.back();
    ready.pop_back();
    ENGINE_CHECK(n->backward != nullptr, "backward through the graph a second time (at ", n->name,
                 "); its buffers were freed: pass retain_graph=true to the first backward");
    Tensor gn;
    if (auto it = grads.find(n); it != grads.end()) {
      gn = std::move(it->second);
      grads.erase(it);
    }
    TensorList results;
    std::vector<bool> needs(n->next.size());
    for (size_t i = 0; i < n->next.size(); ++i) needs[i] = n->next[i].needed();
    if (gn.defined()) {
      results = n->backward(gn, needs);
      ENGINE_CHECK(results.size() == n->next.size(), "backward of ", n->name, " returned ",
                   results.size(), " gradients for ", n->next.size(), " inputs");
    }
    for (size_t i = 0; i < n->next.size(); ++i) {
      const Edge& e = n->next[i];
      const bool has = gn.defined() && needs[i] && results[i].defined();
      if (e.fn) {
        if (has) {
          check_grad(results[i], e.fn->out_shape, n->name);
          Tensor& slot = grads[e.fn.get()];
          slot = accumulate(slot, results[i]);
        }
        if (--deps[e.fn.get()] == 0) ready.push_back(e.fn.get());
      } else if (e.leaf && has) {
        check_grad(results[i], e.leaf->shape, n->name);
        e.leaf->grad = accumulate(e.leaf->grad ? Tensor(e.leaf->grad) : Tensor(), results[i]).impl_ptr();
      }
    }
    if (!retain_graph) {
      n->backward = nullptr;  // frees what the closure saved
      n->next.clear();
    }
  }
}

}  // namespace engine
