// Image-specific class saliency through the engine's one backward pass.
//
// Every method asks autograd for the gradient of an unnormalised class score S_c (the
// logit, before softmax) with respect to something, with only that something requiring
// a gradient, so no parameter gradient is computed or stored:
//   vanilla    (Simonyan et al. 2013): M = max_c |dS/dx|
//   smoothgrad (Smilkov et al. 2017):  M = max_c |mean_s dS/dx (x + noise_s)|,
//              noise_s ~ N(0, (noise * (max x - min x))^2) per image
//   integrated (Sundararajan et al. 2017): M = max_c |(x - b) * mean_k dS/dx (b + k/m (x - b))|,
//              k = 1..m, b the black image
//   guided     (Springenberg et al. 2015): vanilla with every ReLU's backward replaced by
//              the guided rule
//   gradcam    (Selvaraju et al. 2017): at activations A of the last convolution,
//              M = upsample(relu(sum_k mean_ij(dS/dA_k) A_k)), bilinear, to the input size
// And the paper's class model visualisation: gradient ascent on S_c(I) - lambda |I|^2
// from I = 0.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "engine/nn/module.h"

namespace engine::saliency {

enum class Method { Vanilla, SmoothGrad, Integrated, Guided, GradCam };

// "vanilla", "smoothgrad", "integrated", "guided" or "gradcam".
Method parse_method(const std::string& name);
std::string method_name(Method m);

struct Options {
  Method method = Method::Vanilla;
  int samples = 25;      // smoothgrad: noisy copies per image
  double noise = 0.15;   // smoothgrad: noise std as a fraction of the image's value range
  int steps = 32;        // integrated: Riemann steps on the path from the baseline
  uint64_t seed = 0;     // smoothgrad noise
  // integrated: the baseline, per channel, in the network's (normalised) input space;
  // the default is a black image under ImageNet normalisation.
  std::vector<double> baseline = {-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225};
};

// The network cut where Grad-CAM looks: trunk(x) = activations A, head(A) = logits.
struct Split {
  std::function<Tensor(const Tensor&)> trunk, head;
};

struct Result {
  Tensor maps;    // [N, H, W] in the input's dtype, raw (not rescaled)
  Tensor logits;  // [N, K] at the unmodified input
};

// x: [N, 3, H, W] normalised images; targets: one class per image. The model runs in
// eval mode with its parameters frozen for the call (both restored afterwards). split
// is required for Grad-CAM only.
Result compute(nn::Module& model, const Tensor& x, const std::vector<int64_t>& targets, const Options& options,
               const Split* split = nullptr);

// sum_n logits[n, targets[n]]: the scores whose gradient the methods take.
Tensor class_score(const Tensor& logits, const std::vector<int64_t>& targets);

// Bilinear resize of maps [N, h, w] to [N, H, W], as torch's interpolate with
// align_corners=False.
Tensor upsample_bilinear(const Tensor& maps, int64_t H, int64_t W);

struct VisualizeOptions {
  int64_t size = 224;
  int steps = 200;
  double lr = 1.0;
  double l2 = 1e-4;     // lambda in S_c - lambda |I|^2
  double momentum = 0.9;
};

// The class model image I* = argmax S_c(I) - lambda |I|^2, found by gradient ascent
// from zero; returned in the network's input space, [3, size, size].
Tensor visualize_class(nn::Module& model, int64_t target, const VisualizeOptions& options);

}  // namespace engine::saliency
