//! C[b] = alpha · op(A[b]) · op(B[b]) (+ bias) (+ C[b]).
//!
//! Shapes: op(A) is [M, K] (A stored [M, K], or [K, M] when `trans_a`); op(B) is [K, N] (B
//! stored [K, N], or [N, K] when `trans_b`); C is [M, N]. A or B holding a single matrix is
//! shared by every batch entry.

#[allow(clippy::too_many_arguments)]
pub fn matmul(
    a: &[f64],            // [batch|1, M, K] or [batch|1, K, M]
    b: &[f64],            // [batch|1, K, N] or [batch|1, N, K]
    bias: Option<&[f64]>, // [N]
    c: &mut [f64],        // [batch, M, N]
    (batch, m, n, k): (usize, usize, usize, usize),
    trans_a: bool,
    trans_b: bool,
    alpha: f64,
    accumulate: bool,
) {
    let a_stride = if a.len() == m * k { 0 } else { m * k };
    let b_stride = if b.len() == k * n { 0 } else { k * n };
    for bi in 0..batch {
        let a = &a[bi * a_stride..];
        let b = &b[bi * b_stride..];
        for i in 0..m {
            for j in 0..n {
                let mut sum = 0.0;
                for p in 0..k {
                    let av = if trans_a { a[p * m + i] } else { a[i * k + p] };
                    let bv = if trans_b { b[j * k + p] } else { b[p * n + j] };
                    sum += av * bv;
                }
                let mut v = alpha * sum + bias.map_or(0.0, |bias| bias[j]);
                let out = &mut c[bi * m * n + i * n + j];
                if accumulate {
                    v += *out;
                }
                *out = v;
            }
        }
    }
}
