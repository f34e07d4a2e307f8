// Dropout's counter-based mask (dropout.wgsl, and the matmul kernels that fuse it into one
// operand): element i of a step's site survives when hash(seed, step, i) >= threshold, where
// threshold = p * 2^32. The mask is never stored; whoever needs it recomputes it.

// PCG's output permutation (O'Neill), a good 32-bit mixer. Chaining it over (step, seed, i)
// gives every element of every step an independent-looking word.
fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

fn dropout_keeps(seed: u32, step: u32, threshold: u32, i: u32) -> bool {
    return pcg(i ^ pcg(seed ^ pcg(step))) >= threshold;
}
