#include "engine/optim/sgd.h"

#include <cmath>

#include "engine/autograd.h"
#include "kernels/sgd.h"

namespace engine::optim {

void validate(const SgdOptions& o, const std::string& where) {
  ENGINE_CHECK(std::isfinite(o.lr) && o.lr >= 0.0, where, ": Invalid learning rate: ", o.lr);
  ENGINE_CHECK(std::isfinite(o.momentum) && o.momentum >= 0.0, where, ": Invalid momentum value: ", o.momentum);
  ENGINE_CHECK(std::isfinite(o.dampening), where, ": Invalid dampening value: ", o.dampening);
  ENGINE_CHECK(std::isfinite(o.weight_decay) && o.weight_decay >= 0.0, where,
               ": Invalid weight_decay value: ", o.weight_decay);
  ENGINE_CHECK(!o.nesterov || (o.momentum > 0.0 && o.dampening == 0.0), where,
               ": Nesterov momentum requires a momentum and zero dampening (momentum ", o.momentum,
               ", dampening ", o.dampening, ")");
}

namespace {
std::string group_name(size_t g) { return "SGD param group " + std::to_string(g); }
}  // namespace

// ---- SGD -------------------------------------------------------------------------------

SGD::SGD(std::vector<ParamGroup> groups) {
  ENGINE_CHECK(!groups.empty(), "SGD: optimizer got an empty list of parameter groups");
  for (auto& g : groups) add_param_group(std::move(g));
}

SGD::SGD(std::vector<Tensor> params, SgdOptions options) : SGD(std::vector<ParamGroup>{{std::move(params), options}}) {}

void SGD::check_group(const ParamGroup& group, size_t index) const {
  const std::string where = group_name(index);
  validate(group.options, where);
  ENGINE_CHECK(!group.params.empty(), where, ": optimizer got an empty parameter list");
  for (size_t i = 0; i < group.params.size(); ++i) {
    const Tensor& p = group.params[i];
    ENGINE_CHECK(p.defined(), where, ": parameter ", i, " is undefined");
    ENGINE_CHECK(p.is_leaf(), where, ": can't optimize a non-leaf tensor (parameter ", i, ", ", p.str(), ")");
    for (size_t j = 0; j < i; ++j)
      ENGINE_CHECK(!p.same(group.params[j]), where, ": parameter ", i, " (", p.str(), ") repeats parameter ", j);
    for (size_t k = 0; k < groups_.size(); ++k)
      for (const Tensor& q : groups_[k].params)
        ENGINE_CHECK(!p.same(q), where, ": parameter ", i, " (", p.str(),
                     ") already appears in param group ", k);
  }
}

void SGD::add_param_group(ParamGroup group) {
  check_group(group, groups_.size());
  buffers_.emplace_back(group.params.size());
  groups_.push_back(std::move(group));
}

size_t SGD::num_params() const {
  size_t n = 0;
  for (const auto& g : groups_) n += g.params.size();
  return n;
}

void SGD::step() {
  NoGradGuard no_grad;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const SgdOptions& o = groups_[gi].options;
    validate(o, group_name(gi));
    for (size_t i = 0; i < groups_[gi].params.size(); ++i) {
      const Tensor& p = groups_[gi].params[i];
      const Tensor g = p.grad();
      if (!g.defined()) continue;
      ENGINE_CHECK(g.shape() == p.shape() && g.dtype() == p.dtype() && g.device() == p.device(),
                   group_name(gi), ": gradient ", g.str(), " does not match parameter ", i, " ", p.str());
      kernels::SgdParams h{o.lr, o.momentum, o.dampening, o.weight_decay, o.nesterov, false};
      Tensor& buf = buffers_[gi][i];
      if (o.momentum != 0.0 && !buf.defined()) {
        buf = empty_like(p);
        h.first_step = true;
      }
      const bool use_buf = o.momentum != 0.0;
      dispatch_dtype(p.dtype(), [&](auto tag) {
        using T = decltype(tag);
        T* b = use_buf ? buf.data<T>() : nullptr;
        if (p.device().is_cpu()) kernels::sgd_step_cpu<T>(p.data<T>(), g.data<T>(), b, h, p.numel());
        else kernels::sgd_step_cuda<T>(p.data<T>(), g.data<T>(), b, h, p.numel());
      });
    }
  }
}

void SGD::zero_grad() {
  for (auto& g : groups_)
    for (Tensor& p : g.params) p.zero_grad();
}

std::vector<Tensor> SGD::state() const {
  std::vector<Tensor> out;
  out.reserve(num_params());
  for (const auto& bs : buffers_) out.insert(out.end(), bs.begin(), bs.end());
  return out;
}

void SGD::load_state(const std::vector<Tensor>& buffers) {
  ENGINE_CHECK(buffers.size() == num_params(), "SGD::load_state: ", buffers.size(),
               " momentum buffers for an optimizer with ", num_params(), " parameters");
  std::vector<std::vector<Tensor>> next(groups_.size());
  size_t k = 0;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    for (size_t i = 0; i < groups_[gi].params.size(); ++i, ++k) {
      const Tensor& src = buffers[k];
      const Tensor& p = groups_[gi].params[i];
      if (!src.defined()) {
        next[gi].emplace_back();
        continue;
      }
      ENGINE_CHECK(src.shape() == p.shape(), "SGD::load_state: momentum buffer ", k, " has shape ",
                   shape_str(src.shape()), " but parameter ", i, " of ", group_name(gi), " has shape ",
                   shape_str(p.shape()));
      Tensor b = empty_like(p);
      b.copy_(src);  // converts dtype and crosses devices
      next[gi].push_back(b);
    }
  }
  buffers_ = std::move(next);
}

// ---- StepLR ----------------------------------------------------------------------------

StepLR::StepLR(SGD& optimizer, int64_t step_size, double gamma)
    : opt_(optimizer), step_size_(step_size), gamma_(gamma) {
  ENGINE_CHECK(step_size > 0, "StepLR: step_size must be positive, got ", step_size);
  ENGINE_CHECK(std::isfinite(gamma) && gamma >= 0.0, "StepLR: gamma must be finite and non-negative, got ", gamma);
  for (const auto& g : opt_.param_groups()) base_lrs_.push_back(g.options.lr);
}

void StepLR::step() {
  ++last_epoch_;
  if (last_epoch_ % step_size_ != 0) return;
  for (auto& g : opt_.param_groups()) g.options.lr *= gamma_;
}

std::vector<double> StepLR::get_lr() const {
  std::vector<double> out;
  for (const auto& g : opt_.param_groups()) out.push_back(g.options.lr);
  return out;
}

void StepLR::load_state(int64_t last_epoch) {
  ENGINE_CHECK(last_epoch >= 0, "StepLR::load_state: last_epoch must be non-negative, got ", last_epoch);
  last_epoch_ = last_epoch;
}

}  // namespace engine::optim
