// reshape, flatten and cat.
#include "engine/ops/common.h"
#include "kernels/cat.h"

namespace engine {

Tensor reshape(const Tensor& x, const Shape& shape) { return x.reshape(shape); }
Tensor flatten(const Tensor& x, int64_t start_dim, int64_t end_dim) { return x.flatten(start_dim, end_dim); }

Tensor cat(const TensorList& xs, int64_t dim) {
  ENGINE_CHECK(!xs.empty(), "cat: no tensors");
  const Tensor& first = xs[0];
  ENGINE_CHECK(first.defined(), "cat: undefined input");
  const int64_t nd = first.dim();
  ENGINE_CHECK(nd > 0, "cat: zero-dimensional input");
  const int64_t d = detail::wrap_dim("cat", dim, nd);
  std::vector<int64_t> sizes;
  Shape out = first.shape();
  out[static_cast<size_t>(d)] = 0;
  for (size_t k = 0; k < xs.size(); ++k) {
    detail::check_compatible("cat", first, xs[k]);
    bool ok = xs[k].dim() == nd;
    for (int64_t i = 0; ok && i < nd; ++i)
      if (i != d && xs[k].shape()[static_cast<size_t>(i)] != first.shape()[static_cast<size_t>(i)]) ok = false;
    ENGINE_CHECK(ok, "cat along dimension ", d, ": shapes ", shape_str(first.shape()), " and ",
                 shape_str(xs[k].shape()), " differ outside it");
    sizes.push_back(xs[k].size(d));
    out[static_cast<size_t>(d)] += xs[k].size(d);
  }
  const detail::Split3 sp = detail::split_at(first.shape(), d);
  Tensor y = Tensor::empty(out, first.dtype(), first.device());
  dispatch_dtype(first.dtype(), [&](auto tag) {
    using T = decltype(tag);
    std::vector<const T*> ptrs;
    for (const Tensor& t : xs) ptrs.push_back(t.data<T>());
    detail::on_device(first.device(),
        [&] { kernels::cat_cpu<T>(ptrs, sizes, y.data<T>(), sp.outer, sp.inner); },
        [&] { kernels::cat_cuda<T>(ptrs, sizes, y.data<T>(), sp.outer, sp.inner); });
  });
  std::vector<Shape> shapes;
  for (const Tensor& t : xs) shapes.push_back(t.shape());
  return record(y, xs, "cat", [sizes, shapes, sp](const Tensor& g, const std::vector<bool>& needs) {
    TensorList grads(shapes.size());
    dispatch_dtype(g.dtype(), [&](auto tag) {
      using T = decltype(tag);
      std::vector<T*> ptrs(shapes.size(), nullptr);
      for (size_t k = 0; k < shapes.size(); ++k)
        if (needs[k]) {
          grads[k] = Tensor::empty(shapes[k], g.dtype(), g.device());
          ptrs[k] = grads[k].data<T>();
        }
      detail::on_device(g.device(),
          [&] { kernels::split_cpu<T>(g.data<T>(), ptrs, sizes, sp.outer, sp.inner); },
          [&] { kernels::split_cuda<T>(g.data<T>(), ptrs, sizes, sp.outer, sp.inner); });
    });
    return grads;
  });
}

}  // namespace engine
