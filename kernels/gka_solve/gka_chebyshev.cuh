// The per-row factors and the momentum weights of GKA's Chebyshev iteration as
// model::gka_detail::chebyshev_iterate forms them, shared by kernels/gka_solve's kernels.
#pragma once

namespace prime::kernels::detail::gka {

// Row t's factors (zeros for padding rows t >= chunk, which then stay zero): eta = 2 / (2 lambda +
// f), keep = kappa = 1 - eta lambda, decay = e^{G_t}, with lambda = r f and f = ||H_t||_F.
struct RowFactors {
  float eta = 0.0f, keep = 0.0f, decay = 0.0f;
  RowFactors() = default;
  __device__ RowFactors(const float* frob, const float* from_start, int t, int chunk, double ridge_strength) {
    if (t < chunk) {
      const float f = frob[t];
      const float lambda = f * static_cast<float>(ridge_strength);
      eta = 2.0f / (2.0f * lambda + f);
      keep = 1.0f - eta * lambda;
      decay = from_start[t];
    }
  }
};

// omega_1, omega_2, ...: omega_0 = 2, omega_{i+1} = 1 / (1 - c omega_i) with c = (f / (2 (2 lambda +
// f)))^2 = (1 / (2 (2 r + 1)))^2, the same for every position; in double, as the host forms them.
struct ChebyshevOmegas {
  double c, omega = 2.0;
  __device__ explicit ChebyshevOmegas(double ridge_strength) {
    const double spread = 1.0 / (2.0 * (2.0 * ridge_strength + 1.0));
    c = spread * spread;
  }
  __device__ double next() {
    omega = 1.0 / (1.0 - c * omega);
    return omega;
  }
};

// Where iterate i of chunk m starts in an iterates buffer, in units of C D elements: [N, M, C, D]
// (iteration-major: iteration step M, chunk step 1; the reverse sweep kernel reads it) or [M, N, C, D]
// (chunk-major: 1 and N; the adjoint recurrence and the stacked products read a chunk's N C rows in a row).
struct IterateSteps {
  long long iteration, chunk;
  __host__ __device__ size_t offset(int i, long long m, size_t cd) const {
    return (static_cast<size_t>(i) * iteration + static_cast<size_t>(m) * chunk) * cd;
  }
};

}  // namespace prime::kernels::detail::gka
