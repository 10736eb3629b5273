// SPDX-License-Identifier: GPL-2.0-or-later
/* The client's kernel data path (RFC 4380 sections 5.2.3 and 5.2.4 case 1; docs/kernel.md).
 * Two programs, one job each; the sans-I/O core (core/client.py) decides everything, and the
 * daemon's mirror copies its trusted peers into `client_peers`: Teredo peers at their mapping,
 * and native destinations at the relay the ping test found for them (section 5.2.9: the relay
 * is that destination's "mapping" in the core's peer list, one entry per destination).
 *
 * client_encap, tcx egress of the client's TUN: a packet from our own Teredo address to a
 *   valid trusted peer (section 5.2.4 case 1: trusted, last reception < 30 s ago, 600 s for a
 *   local peer) is encapsulated from the client socket's IPv4:port to the peer's mapping and
 *   redirected out of the IPv4 interface: the bytes the core's send_udp would send.
 * client_decap, tcx ingress of the IPv4 interface: a datagram to the client socket's port
 *   from a trusted peer's recorded mapping, carrying a bare TCP or UDP IPv6 packet for our own
 *   address (section 5.2.3 case 1) is decapsulated and handed to the IPv6 stack as received on
 *   the TUN: the packet the core's write_tun would write.
 *
 * Everything else returns TC_ACT_OK unchanged: the Python path, exactly as without us (bubbles,
 * RAs, pings and echo replies, ICMPv6, origin indications, trailers, the server's port, unknown
 * peers, another mapping, stale peers, fragments, IPv4 options, checksums no device checked). */
#include "teredo_encap.h"

#define TEREDO_SERVER_PORT 3544
/* Validity of a trusted peer (section 5.2.4), in stamp units (2**20 ns), a little under the
 * core's 30 s / 600 s: the kernel may stop forwarding a peer earlier than the core, never later
 * (then the packet takes the Python path, which decides as always). */
#define VALID_UNITS ((__u32)(29ULL * 1000000000ULL >> 20))
#define VALID_LOCAL_UNITS ((__u32)(599ULL * 1000000000ULL >> 20))

/* Written by the daemon (one entry) when the client qualifies, changes address or moves;
 * port 0 (not qualified) makes both programs pass everything. Network order. */
struct client_config {
	__be32 ipv4;        /* the socket's local IPv4 (outer source; decap: destination, 0 = any) */
	__be16 port;        /* the socket's UDP port; 0 = programs pass everything */
	__u8 encap_l2;      /* bytes of L2 header at client_encap: 0 on the TUN, 14 on Ethernet */
	__u8 decap_l2;      /* the same at client_decap */
	__u32 out_ifindex;  /* where encapsulated packets go (bpf_redirect_neigh routes there) */
	__u32 tun_ifindex;  /* where decapsulated packets enter the IPv6 stack (the TUN) */
	__u8 address[16];   /* our Teredo address (packets must come from it / go to it) */
	__u32 flags;        /* CFG_DEVICE_CSUM */
};

/* The output interface completes a checksum left to the device in software before the packet
 * leaves this host (its TX checksum offload is off: validate_xmit_skb does it, at the inner
 * header's offset, which encapsulation in front of it does not move). Then a CHECKSUM_PARTIAL
 * packet (every TCP segment a local socket sends) may be encapsulated here: it leaves with the
 * bytes the TUN path would have sent. Without the flag such packets take the Python path: on a
 * veth with offload on, the checksum would reach another namespace's UDP socket unfinished. */
#define CFG_DEVICE_CSUM 1

/* The relay's slots (enum teredo_counter, teredo_encap.h), then the client's own. */
enum client_counter {
	C_DECAP_STALE = C_SHARED, /* in the map, last reception too old: Python (the core may be
				   * re-checking the peer) */
	C_ENCAP_GSO,        /* of C_ENCAP: TCP GSO super-packets (the device segments them) */
	C_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); /* the daemon sets the core's peer capacity */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct teredo_key);
	__type(value, struct teredo_peer);
} client_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct client_config);
} client_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} client_counters SEC(".maps");

/* Section 5.2.4 case 1: "valid" = a reception less than 30 s ago (600 s for a local peer).
 * last_rx is the core's last reception (written by the mirror) or the kernel's, the later. */
static __always_inline int peer_valid(const struct teredo_peer *peer, __u32 now)
{
	__u32 age = now - peer->last_rx;

	return age < (peer->flags & TEREDO_PEER_LOCAL ? VALID_LOCAL_UNITS : VALID_UNITS);
}

static __always_inline int is_ours(const struct client_config *cfg, const __u8 *addr)
{
	__u64 a[2], b[2];

	__builtin_memcpy(a, addr, 16);
	__builtin_memcpy(b, cfg->address, 16);
	return a[0] == b[0] && a[1] == b[1];
}

static __always_inline int encap_at(struct __sk_buff *skb, const struct client_config *cfg, const __u32 l2)
{
	struct ipv6hdr *ip6 = teredo_ip6_at(skb, l2);
	struct teredo_peer *peer;
	int gso, ret;
	__u32 now;

	/* The core's first checks (receive_tun), and then a unicast destination, our own address as
	 * the source (else it drops: wrong_source). */
	if (!ip6 || ip6->daddr.in6_u.u6_addr8[0] == 0xff || !is_ours(cfg, ip6->saddr.in6_u.u6_addr8)) {
		teredo_count(&client_counters, C_ENCAP_OTHER);
		return TC_ACT_OK;
	}
	/* Case 1: a trusted peer (a Teredo peer, or a native destination at its relay)... */
	peer = teredo_encap_peer(&client_peers, &client_counters, ip6);
	if (!peer)
		return TC_ACT_OK;
	/* ... and a valid one; else the core bubbles or pings it again. The clock is read once
	 * for this check and the last_tx stamp. */
	now = teredo_stamp();
	if (!peer_valid(peer, now)) {
		teredo_count(&client_counters, C_ENCAP_STALE);
		return TC_ACT_OK;
	}
	/* A GSO packet (a local TCP socket's bulk write, tcp_sendmsg builds them whatever the TUN's
	 * features) is encapsulated as a UDP tunnel packet below, segmented by the output device
	 * (software GSO: validate_xmit_skb) with complete checksums: only where that device
	 * completes checksums (else its TSO would carry the whole packet, partial checksums inside,
	 * to the next namespace). Other GSO kinds (UDP_SEGMENT) are the TUN path's. */
	gso = skb->gso_size != 0;
	if (gso ? !(cfg->flags & CFG_DEVICE_CSUM) || ip6->nexthdr != IPPROTO_TCP
		: !(cfg->flags & CFG_DEVICE_CSUM) && teredo_l4_partial(skb, l2, ip6)) {
		teredo_count(&client_counters, C_ENCAP_PARTIAL);
		return TC_ACT_OK;
	}
	/* A GSO packet keeps its segment size (BPF_F_ADJ_ROOM_FIXED_GSO): each segment is the
	 * one the TUN path would read (the TUN's MTU made the MSS), with the outer header in
	 * front, which the segmentation copies to each (lengths, IPv4 ID + n and header checksum
	 * rewritten per segment; UDP checksum 0, SKB_GSO_UDP_TUNNEL). */
	ret = teredo_encap_send(skb, l2, skb->len - l2, peer, cfg->ipv4, cfg->port,
				gso ? BPF_F_ADJ_ROOM_FIXED_GSO : 0, &client_counters, now);
	if (ret != TC_ACT_UNSPEC)
		return ret;
	if (gso)
		teredo_count(&client_counters, C_ENCAP_GSO);
	return bpf_redirect_neigh(cfg->out_ifindex, NULL, 0, 0);
}

static __always_inline const struct client_config *config(void)
{
	__u32 zero = 0;
	const struct client_config *cfg = bpf_map_lookup_elem(&client_cfg, &zero);

	/* Not configured, or not qualified (no address: every packet is the core's). */
	if (!cfg || !cfg->port || cfg->address[0] == 0)
		return NULL;
	return cfg;
}

SEC("tc")
int client_encap(struct __sk_buff *skb)
{
	const struct client_config *cfg = config();

	if (!cfg)
		return TC_ACT_OK;
	if (cfg->encap_l2)
		return encap_at(skb, cfg, ETH_HLEN);
	return encap_at(skb, cfg, 0);
}

static __always_inline int decap_at(struct __sk_buff *skb, const struct client_config *cfg, const __u32 l2)
{
	__u32 ulen;
	struct iphdr *ip = teredo_outer_at(skb, l2, cfg->ipv4, cfg->port, &ulen);
	struct udphdr *udp;
	struct ipv6hdr *ip6;
	struct teredo_peer *peer;
	__u32 now;
	__u8 s0;
	int ret;

	/* Outer: IPv4 without options, not a fragment, UDP to the client socket. */
	if (!ip)
		goto other;
	udp = (void *)(ip + 1);
	ip6 = (void *)(udp + 1);
	if (skb->gso_segs > 1 || skb->gso_size)
		goto other; /* an aggregate (GRO): the stack splits it on the Python path */
	/* From the server's port: RAs, relayed bubbles with origin indications, our pings'
	 * replies: the core's full path (its fast path leaves them too). */
	if (udp->source == bpf_htons(TEREDO_SERVER_PORT))
		goto other;
	/* The UDP checksum, as at the relay (teredo_relay.bpf.c): none, verified by the device,
	 * or left to the device by a sender of this host; otherwise the stack checks it. */
	if (teredo_udp4_unverified(skb, ip, udp))
		goto other;
	/* Inner (the core's receive_udp fast path): a bare TCP or UDP IPv6 packet filling the
	 * datagram (an echo reply may settle a ping test), for our own address, from a source that
	 * is not multicast, link-local, :: or ::1 (section 5.2.3). */
	if (!teredo_inner_ok(ip6, ulen) || !is_ours(cfg, ip6->daddr.in6_u.u6_addr8))
		goto other;
	s0 = ip6->saddr.in6_u.u6_addr8[0];
	if (s0 == 0x00 || s0 == 0xfe || s0 == 0xff)
		goto other;
	/* Case 1: a trusted peer, heard at its recorded mapping. */
	peer = teredo_decap_peer(&client_peers, &client_counters, ip, udp, ip6);
	if (!peer)
		return TC_ACT_OK;
	/* A stale peer may have a bubble or ping procedure running in the core, which this
	 * reception settles (and flushes its queue): the core's job. */
	now = teredo_stamp(); /* once: the validity check and the last_rx stamp */
	if (!peer_valid(peer, now)) {
		teredo_count(&client_counters, C_DECAP_STALE);
		return TC_ACT_OK;
	}
	ret = teredo_decap_forward(skb, l2, peer, &client_counters, now);
	if (ret != TC_ACT_UNSPEC)
		return ret;
	/* Into the stack as if written to the TUN (the core's write_tun): same input interface
	 * for routing, firewall and sockets bound to it. The L2 header, if any, is dropped by
	 * the redirect to an L3 device. */
	return bpf_redirect(cfg->tun_ifindex, BPF_F_INGRESS);
other:
	teredo_count(&client_counters, C_DECAP_OTHER);
	return TC_ACT_OK;
}

SEC("tc")
int client_decap(struct __sk_buff *skb)
{
	const struct client_config *cfg = config();

	if (!cfg)
		return TC_ACT_OK;
	if (cfg->decap_l2)
		return decap_at(skb, cfg, ETH_HLEN);
	return decap_at(skb, cfg, 0);
}

char LICENSE[] SEC("license") = "GPL";
