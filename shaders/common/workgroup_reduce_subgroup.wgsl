// Workgroup-wide sums and maxima through subgroup operations: each subgroup reduces in its
// registers (subgroupAdd, subgroupMax), its first invocation publishes the result, and after
// one barrier every invocation folds the workgroup's few subgroup results in order. Two
// barriers per reduction instead of the tree's log2(WG). The host includes this part as
// "workgroup_reduce.wgsl" where the device has subgroup operations
// (src/kernels/workgroup_reduce.rs); the barrier part has the same names and signatures.
//
// The including shader defines WG, and its entry points take a `Lanes` argument. Call from
// uniform control flow. Each function returns the workgroup's value to every invocation.
// The order of a subgroup's additions is the hardware's, fixed for a device, so results are
// deterministic from run to run, though not bit-equal to the barrier tree's.

struct Lanes {
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sid: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) nsg: u32,
}

// One slot per subgroup: there are at most WG of them (subgroups of one invocation).
var<workgroup> reduce_scratch: array<f32, WG>;

fn workgroup_sum(l: Lanes, v: f32) -> f32 {
    let s = subgroupAdd(v);
    workgroupBarrier(); // a previous reduction's reads of reduce_scratch are done
    if (l.sid == 0u) { reduce_scratch[l.sg] = s; }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < l.nsg; i++) { total += reduce_scratch[i]; }
    return total;
}

fn workgroup_max(l: Lanes, v: f32) -> f32 {
    let s = subgroupMax(v);
    workgroupBarrier();
    if (l.sid == 0u) { reduce_scratch[l.sg] = s; }
    workgroupBarrier();
    var total = reduce_scratch[0];
    for (var i = 1u; i < l.nsg; i++) { total = max(total, reduce_scratch[i]); }
    return total;
}
