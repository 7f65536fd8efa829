#include "rope_host.h"

#include <ATen/ops/empty_like.h>

#include "../host_utils.h"

namespace lumina {

at::Tensor rope_host(const at::Tensor& x, const at::Tensor& freqs_cis, bool inverse, RopeLauncher launch) {
  const DType dtype = kernel_dtype(x, "x");
  TORCH_CHECK(x.dim() == 4, "lumina: `x` must be (batch, seq, heads, head_dim), got shape ", x.sizes());
  check_contiguous(x, "x");
  const int64_t B = x.size(0), L = x.size(1), H = x.size(2), D = x.size(3);
  TORCH_CHECK(D % 2 == 0, "lumina: the head dim of `x` (last dimension) must be even, got ", D);
  TORCH_CHECK(freqs_cis.scalar_type() == at::kComplexFloat, "lumina: `freqs_cis` must be complex64, got ",
              freqs_cis.scalar_type());
  check_same_device(freqs_cis, "freqs_cis", x, "x");
  check_contiguous(freqs_cis, "freqs_cis");
  const bool per_batch = freqs_cis.dim() == 3;
  TORCH_CHECK((freqs_cis.dim() == 2 && freqs_cis.size(0) == L && freqs_cis.size(1) == D / 2) ||
                  (per_batch && freqs_cis.size(0) == B && freqs_cis.size(1) == L && freqs_cis.size(2) == D / 2),
              "lumina: `freqs_cis` must have shape (seq, head_dim/2) = (", L, ", ", D / 2,
              ") or (batch, seq, head_dim/2) = (", B, ", ", L, ", ", D / 2, "), got ", freqs_cis.sizes());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % (2 * x.element_size()) == 0,
              "lumina: `x` must start on a whole (x[2i], x[2i+1]) pair; its storage offset ", x.storage_offset(),
              " splits one. Call .clone() first");
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  RopeParams p;
  p.x = x.data_ptr();
  p.freqs = reinterpret_cast<const float*>(freqs_cis.data_ptr());  // complex64 is (real, imag) float pairs
  p.out = out.data_ptr();
  p.batch = B;
  p.seq = L;
  p.heads = H;
  p.head_dim = D;
  p.freqs_per_batch = per_batch;
  p.inverse = inverse;
  launch(p, dtype);
  return out;
}

}  // namespace lumina
