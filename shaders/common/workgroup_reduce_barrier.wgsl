// Workgroup-wide sums and maxima through a barrier tree in workgroup memory: log2(WG) barriers
// per reduction. The host includes this part as "workgroup_reduce.wgsl" where the device has no
// subgroup operations, or where they are turned off (src/kernels/workgroup_reduce.rs); the
// subgroup part has the same names and signatures.
//
// The including shader defines WG (a power of two), and its entry points take a `Lanes`
// argument instead of @builtin(local_invocation_index). Call from uniform control flow: both
// functions hold barriers. Each returns the workgroup's value to every invocation.

struct Lanes {
    @builtin(local_invocation_index) lid: u32,
}

var<workgroup> reduce_scratch: array<f32, WG>;

fn workgroup_sum(l: Lanes, v: f32) -> f32 {
    workgroupBarrier(); // a previous reduction's reads of reduce_scratch are done
    reduce_scratch[l.lid] = v;
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (l.lid < stride) { reduce_scratch[l.lid] += reduce_scratch[l.lid + stride]; }
    }
    workgroupBarrier();
    return reduce_scratch[0];
}

fn workgroup_max(l: Lanes, v: f32) -> f32 {
    workgroupBarrier();
    reduce_scratch[l.lid] = v;
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (l.lid < stride) { reduce_scratch[l.lid] = max(reduce_scratch[l.lid], reduce_scratch[l.lid + stride]); }
    }
    workgroupBarrier();
    return reduce_scratch[0];
}
