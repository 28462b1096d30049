#include "engine/saliency.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"

namespace engine::saliency {
namespace {

// Eval mode and frozen parameters for the lifetime of the guard, restored afterwards:
// the backward pass then computes the input's gradient and nothing else.
class FrozenEval {
 public:
  explicit FrozenEval(nn::Module& m) : model_(m), was_training_(m.is_training()) {
    for (Tensor& p : m.parameters()) {
      saved_.emplace_back(p, p.requires_grad());
      p.requires_grad_(false);
    }
    m.eval();
  }
  ~FrozenEval() {
    for (auto& [p, rg] : saved_) p.requires_grad_(rg);
    model_.train(was_training_);
  }
  FrozenEval(const FrozenEval&) = delete;
  FrozenEval& operator=(const FrozenEval&) = delete;

 private:
  nn::Module& model_;
  bool was_training_;
  std::vector<std::pair<Tensor, bool>> saved_;
};

// Every ReLU module replaced by a GuidedReLU for the lifetime of the guard.
class GuidedRelus {
 public:
  explicit GuidedRelus(nn::Module& m) { swap(m); }
  ~GuidedRelus() {
    for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) std::get<0>(*it)->replace_child(std::get<1>(*it), std::get<2>(*it));
  }
  GuidedRelus(const GuidedRelus&) = delete;
  GuidedRelus& operator=(const GuidedRelus&) = delete;

 private:
  void swap(nn::Module& m) {
    const auto children = m.children();  // copy: replace_child edits the list
    for (const auto& [name, child] : children) {
      if (dynamic_cast<nn::ReLU*>(child.get()) != nullptr) {
        undo_.emplace_back(&m, name, child);
        m.replace_child(name, std::make_shared<nn::GuidedReLU>());
      } else {
        swap(*child);
      }
    }
  }
  std::vector<std::tuple<nn::Module*, std::string, std::shared_ptr<nn::Module>>> undo_;
};

// dS/dx at x, where S = sum_n logits[n, t_n]; optionally returns the logits.
Tensor input_gradient(nn::Module& model, const Tensor& x, const std::vector<int64_t>& targets, Tensor* logits) {
  Tensor xin = x.detach().requires_grad_();
  Tensor out = model(xin);
  if (logits != nullptr) *logits = out.detach();
  class_score(out, targets).backward();
  return xin.grad();
}

Tensor clean_logits(nn::Module& model, const Tensor& x) {
  NoGradGuard ng;
  return model(x);
}

// Per-image N(0, (noise * range_n)^2) noise on the CPU, moved to x's device.
Tensor smoothgrad_noise(const Tensor& x, double noise, Generator& gen) {
  const std::vector<double> v = x.to_vector<double>();
  const int64_t N = x.size(0), per = x.numel() / N;
  Tensor z = Tensor::randn(x.shape(), gen, DType::F64);
  double* zp = z.data<double>();
  for (int64_t n = 0; n < N; ++n) {
    const auto first = v.begin() + n * per, last = first + per;
    const auto [lo, hi] = std::minmax_element(first, last);
    const double sigma = noise * (*hi - *lo);
    for (int64_t i = 0; i < per; ++i) zp[n * per + i] *= sigma;
  }
  return z.to(x.dtype()).to(x.device());
}

Tensor baseline_like(const Tensor& x, const std::vector<double>& per_channel) {
  ENGINE_CHECK(static_cast<int64_t>(per_channel.size()) == x.size(1), "integrated gradients: baseline has ",
               per_channel.size(), " channels, input ", shape_str(x.shape()), " has ", x.size(1));
  const int64_t N = x.size(0), C = x.size(1), HW = x.numel() / (N * C);
  std::vector<double> b(static_cast<size_t>(x.numel()));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      std::fill_n(b.begin() + (n * C + c) * HW, HW, per_channel[static_cast<size_t>(c)]);
  return Tensor::from_vector(x.shape(), b, x.device()).to(x.dtype());
}

Tensor gradcam(const Split& split, const Tensor& x, const std::vector<int64_t>& targets, Tensor* logits) {
  Tensor A;
  {
    NoGradGuard ng;
    A = split.trunk(x.detach());
  }
  ENGINE_CHECK(A.dim() == 4, "gradcam: the trunk must give activations [N, C, h, w], got ", shape_str(A.shape()));
  Tensor Ar = A.detach().requires_grad_();
  Tensor out = split.head(Ar);
  *logits = out.detach();
  class_score(out, targets).backward();
  const int64_t N = A.size(0), C = A.size(1), h = A.size(2), w = A.size(3);
  const std::vector<double> a = A.to_vector<double>(), g = Ar.grad().to_vector<double>();
  std::vector<double> cam(static_cast<size_t>(N * h * w), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const size_t base = static_cast<size_t>((n * C + c) * h * w);
      double alpha = 0;
      for (int64_t i = 0; i < h * w; ++i) alpha += g[base + static_cast<size_t>(i)];
      alpha /= static_cast<double>(h * w);
      for (int64_t i = 0; i < h * w; ++i) cam[static_cast<size_t>(n * h * w + i)] += alpha * a[base + static_cast<size_t>(i)];
    }
  for (double& v : cam) v = std::max(v, 0.0);
  return upsample_bilinear(Tensor::from_vector({N, h, w}, cam), x.size(2), x.size(3)).to(x.dtype());
}

}  // namespace

Method parse_method(const std::string& name) {
  if (name == "vanilla") return Method::Vanilla;
  if (name == "smoothgrad") return Method::SmoothGrad;
  if (name == "integrated") return Method::Integrated;
  if (name == "guided") return Method::Guided;
  if (name == "gradcam") return Method::GradCam;
  throw Error("unknown saliency method '" + name + "': expected vanilla, smoothgrad, integrated, guided or gradcam");
}

std::string method_name(Method m) {
  switch (m) {
    case Method::Vanilla: return "vanilla";
    case Method::SmoothGrad: return "smoothgrad";
    case Method::Integrated: return "integrated";
    case Method::Guided: return "guided";
    case Method::GradCam: return "gradcam";
  }
  return "?";
}

Tensor class_score(const Tensor& logits, const std::vector<int64_t>& targets) {
  ENGINE_CHECK(logits.dim() == 2 && static_cast<int64_t>(targets.size()) == logits.size(0), "class_score: ",
               targets.size(), " targets for logits ", shape_str(logits.shape()));
  const int64_t N = logits.size(0), K = logits.size(1);
  std::vector<double> onehot(static_cast<size_t>(N * K), 0.0);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t t = targets[static_cast<size_t>(n)];
    ENGINE_CHECK(t >= 0 && t < K, "class_score: target class ", t, " of image ", n, " is out of range for ", K,
                 " classes");
    onehot[static_cast<size_t>(n * K + t)] = 1.0;
  }
  const Tensor mask = Tensor::from_vector({N, K}, onehot, logits.device()).to(logits.dtype());
  return sum(mul(logits, mask));
}

Tensor upsample_bilinear(const Tensor& maps, int64_t H, int64_t W) {
  ENGINE_CHECK(maps.dim() == 3 && H > 0 && W > 0, "upsample_bilinear: maps must be [N, h, w], got ",
               shape_str(maps.shape()));
  const int64_t N = maps.size(0), h = maps.size(1), w = maps.size(2);
  const std::vector<double> m = maps.to_vector<double>();
  std::vector<double> out(static_cast<size_t>(N * H * W));
  auto source = [](int64_t dst, int64_t in, int64_t outn, int64_t* i0, int64_t* i1, double* l1) {
    double src = (static_cast<double>(dst) + 0.5) * static_cast<double>(in) / static_cast<double>(outn) - 0.5;
    if (src < 0) src = 0;
    *i0 = std::min(static_cast<int64_t>(src), in - 1);
    *i1 = std::min(*i0 + 1, in - 1);
    *l1 = src - static_cast<double>(*i0);
  };
  for (int64_t y = 0; y < H; ++y) {
    int64_t y0, y1;
    double ly;
    source(y, h, H, &y0, &y1, &ly);
    for (int64_t x = 0; x < W; ++x) {
      int64_t x0, x1;
      double lx;
      source(x, w, W, &x0, &x1, &lx);
      for (int64_t n = 0; n < N; ++n) {
        const double* p = m.data() + n * h * w;
        out[static_cast<size_t>((n * H + y) * W + x)] =
            (1 - ly) * ((1 - lx) * p[y0 * w + x0] + lx * p[y0 * w + x1]) + ly * ((1 - lx) * p[y1 * w + x0] + lx * p[y1 * w + x1]);
      }
    }
  }
  return Tensor::from_vector({N, H, W}, out, maps.device()).to(maps.dtype());
}

Result compute(nn::Module& model, const Tensor& x, const std::vector<int64_t>& targets, const Options& opt,
               const Split* split) {
  ENGINE_CHECK(x.dim() == 4, "saliency: input must be [N, C, H, W], got ", shape_str(x.shape()));
  ENGINE_CHECK(static_cast<int64_t>(targets.size()) == x.size(0), "saliency: ", targets.size(), " targets for ",
               x.size(0), " images");
  FrozenEval frozen(model);
  Result r;
  Tensor grad;
  switch (opt.method) {
    case Method::Vanilla:
      grad = input_gradient(model, x, targets, &r.logits);
      break;
    case Method::Guided: {
      GuidedRelus guided(model);
      grad = input_gradient(model, x, targets, &r.logits);
      break;
    }
    case Method::SmoothGrad: {
      ENGINE_CHECK(opt.samples > 0 && opt.noise >= 0, "smoothgrad: samples must be positive and noise non-negative");
      r.logits = clean_logits(model, x);
      Generator gen(opt.seed);
      for (int s = 0; s < opt.samples; ++s) {
        const Tensor g = input_gradient(model, add(x.detach(), smoothgrad_noise(x, opt.noise, gen)), targets, nullptr);
        grad = grad.defined() ? add(grad, g) : g;
      }
      grad = mul(grad, 1.0 / opt.samples);
      break;
    }
    case Method::Integrated: {
      ENGINE_CHECK(opt.steps > 0, "integrated gradients: steps must be positive");
      r.logits = clean_logits(model, x);
      const Tensor b = baseline_like(x, opt.baseline), diff = sub(x.detach(), b);
      Tensor acc;
      for (int k = 1; k <= opt.steps; ++k) {
        const Tensor g = input_gradient(model, add(b, mul(diff, static_cast<double>(k) / opt.steps)), targets, nullptr);
        acc = acc.defined() ? add(acc, g) : g;
      }
      grad = mul(mul(diff, acc), 1.0 / opt.steps);
      break;
    }
    case Method::GradCam:
      ENGINE_CHECK(split != nullptr, "gradcam needs the network split at its last convolution");
      r.maps = gradcam(*split, x, targets, &r.logits);
      return r;
  }
  r.maps = abs_max(grad, 1);
  return r;
}

Tensor visualize_class(nn::Module& model, int64_t target, const VisualizeOptions& opt) {
  ENGINE_CHECK(opt.size > 0 && opt.steps >= 0, "visualize_class: size and steps must be positive");
  FrozenEval frozen(model);
  Tensor image = Tensor::zeros({1, 3, opt.size, opt.size});
  Tensor velocity = Tensor::zeros(image.shape());
  for (int step = 0; step < opt.steps; ++step) {
    Tensor in = image.detach().requires_grad_();
    Tensor objective = sub(class_score(model(in), {target}), mul(sum(mul(in, in)), opt.l2));
    objective.backward();
    NoGradGuard ng;
    velocity = add(mul(velocity, opt.momentum), in.grad());
    image = add(image, mul(velocity, opt.lr));
  }
  return image.reshape({3, opt.size, opt.size});
}

}  // namespace engine::saliency
