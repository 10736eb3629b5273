// SPDX-License-Identifier: GPL-2.0-or-later
/* The smallest tc program of the kernel data path (docs/kernel.md): counts the packets it sees
 * and passes them on unchanged. `teredo.io.datapath` loads it to learn whether this machine can
 * run the kernel data path at all (CAP_BPF, a verifier that accepts tc programs), and the tests
 * run it through bpf_prog_test_run_opts as their first check of the toolchain. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} probe_seen SEC(".maps");

SEC("tc")
int probe_pass(struct __sk_buff *skb)
{
	__u32 zero = 0;
	__u64 *seen = bpf_map_lookup_elem(&probe_seen, &zero);

	if (seen)
		*seen += 1;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
