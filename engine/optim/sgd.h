// Stochastic gradient descent, exactly torch.optim.SGD, and the StepLR schedule.
//
// For each parameter p with gradient g, per step (the arithmetic is kernels/sgd.h):
//   d = g + weight_decay * p
//   if momentum != 0: buf = first step ? d : momentum * buf + (1 - dampening) * d
//                     d = nesterov ? d + momentum * buf : buf
//   p -= lr * d
// Parameters are organised in groups, each with its own hyper-parameters; the
// momentum buffer of a parameter is created on the first step that updates it.
// Parameters without a gradient are skipped, as torch skips them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace engine::optim {

// Hyper-parameters in torch.optim.SGD's order: SGD(params, lr, momentum, dampening,
// weight_decay, nesterov). A bare number converts to {lr}.
struct SgdOptions {
  SgdOptions(double lr = 1e-3, double momentum = 0.0, double dampening = 0.0,  // NOLINT(google-explicit-constructor)
             double weight_decay = 0.0, bool nesterov = false)
      : lr(lr), momentum(momentum), dampening(dampening), weight_decay(weight_decay), nesterov(nesterov) {}
  double lr;
  double momentum;
  double dampening;
  double weight_decay;
  bool nesterov;
};

// Throws engine::Error, with torch's wording, for a negative or non-finite lr,
// momentum or weight_decay, a non-finite dampening, or nesterov without momentum or
// with dampening. `where` prefixes the message ("SGD param group 1").
void validate(const SgdOptions& options, const std::string& where);

struct ParamGroup {
  std::vector<Tensor> params;
  SgdOptions options;
};

class SGD {
 public:
  // Every parameter must be a defined leaf tensor, and may appear only once across
  // all groups; a group may not be empty.
  explicit SGD(std::vector<ParamGroup> groups);
  SGD(std::vector<Tensor> params, SgdOptions options);

  // Updates, in place and without recording a graph, every parameter whose gradient
  // is defined. The hyper-parameters are read (and checked) at each step, so a
  // scheduler may change them between steps.
  void step();
  // Drops every parameter's gradient (torch's zero_grad(set_to_none=True)).
  void zero_grad();

  // Appends a group (same checks as the constructor; the state of existing groups is kept).
  void add_param_group(ParamGroup group);
  std::vector<ParamGroup>& param_groups() { return groups_; }
  const std::vector<ParamGroup>& param_groups() const { return groups_; }
  // Number of parameters over all groups.
  size_t num_params() const;

  // The momentum buffers, one per parameter in group order (group 0's parameters
  // first); undefined where a parameter has none yet (momentum 0, or never stepped).
  // The tensors share storage with the optimiser's state.
  std::vector<Tensor> state() const;
  // Restores buffers as state() returns them: one entry per parameter, each undefined
  // or of its parameter's shape; values are copied and converted to the parameter's
  // dtype and device. Throws, changing nothing, on a count or shape mismatch.
  void load_state(const std::vector<Tensor>& buffers);

 private:
  void check_group(const ParamGroup& group, size_t index) const;
  std::vector<ParamGroup> groups_;
  std::vector<std::vector<Tensor>> buffers_;  // parallel to groups_[g].params
};

// torch.optim.lr_scheduler.StepLR: every step_size epochs each group's lr is
// multiplied by gamma, so with nothing else touching the lrs,
//   lr = base_lr * gamma ^ (epoch / step_size)   (integer division)
// Call step() once per epoch, after that epoch's optimiser steps. Like torch's, the
// update is multiplicative on the group's current lr (other changes compose).
class StepLR {
 public:
  StepLR(SGD& optimizer, int64_t step_size, double gamma = 0.1);

  void step();
  // The current lr of each group (torch's get_last_lr()).
  std::vector<double> get_lr() const;
  std::vector<double> get_last_lr() const { return get_lr(); }
  // The lr of each group when the scheduler was created.
  const std::vector<double>& base_lrs() const { return base_lrs_; }
  // Epochs stepped so far (0 after construction, as torch's last_epoch).
  int64_t last_epoch() const { return last_epoch_; }
  // Restores the epoch counter of a saved schedule; the lrs themselves are part of the
  // optimiser's groups and are restored with them.
  void load_state(int64_t last_epoch);

 private:
  SGD& opt_;
  int64_t step_size_;
  double gamma_;
  int64_t last_epoch_ = 0;
  std::vector<double> base_lrs_;
};

}  // namespace engine::optim
