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

enum client_counter {
	C_ENCAP = 0,        /* encapsulated and redirected */
	C_ENCAP_NO_PEER,    /* destination not in the map: Python */
	C_ENCAP_PARTIAL,    /* checksum left to the device, or GSO: Python */
	C_ENCAP_OTHER,      /* malformed, not from our address, multicast: Python */
	C_ENCAP_ERROR,      /* a helper failed: Python */
	C_DECAP,            /* decapsulated and handed to the IPv6 stack on the TUN */
	C_DECAP_NO_PEER,    /* inner source not in the map: Python */
	C_DECAP_MAPPING,    /* in the map, but from another IPv4:port: Python (the core decides) */
	C_DECAP_OTHER,      /* not ours, bubbles, ICMPv6, options, fragments...: Python */
	C_DECAP_ERROR,
	C_ENCAP_STALE,      /* in the map, last reception too old (section 5.2.4): Python */
	C_DECAP_STALE,      /* the same on reception (the core may be re-checking the peer) */
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
static __always_inline int peer_valid(const struct teredo_peer *peer)
{
	__u32 age = teredo_stamp() - peer->last_rx;

	return age < (peer->flags & TEREDO_PEER_LOCAL ? VALID_LOCAL_UNITS : VALID_UNITS);
}

static __always_inline int is_ours(const struct client_config *cfg, const __u8 *addr)
{
	__u64 a[2], b[2];

	__builtin_memcpy(a, addr, 16);
	__builtin_memcpy(b, cfg->address, 16);
	return a[0] == b[0] && a[1] == b[1];
}

/* teredo_encap() for a GSO packet: the same outer header, the segment size kept. */
static __always_inline int encap_gso(struct __sk_buff *skb, __u32 l2, const struct teredo_outer *h)
{
	int err = bpf_skb_adjust_room(skb, TEREDO_ENCAP_LEN, BPF_ADJ_ROOM_MAC,
				      BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
					      BPF_F_ADJ_ROOM_FIXED_GSO);

	if (err)
		return err;
	return bpf_skb_store_bytes(skb, l2, h, sizeof(*h), 0);
}

static __always_inline int encap_at(struct __sk_buff *skb, const struct client_config *cfg, const __u32 l2)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + l2;
	struct teredo_peer *peer;
	struct teredo_outer outer;
	struct teredo_key key;
	__u32 len = skb->len - l2;
	__u16 check;
	int gso;

	if ((void *)(ip6 + 1) > data_end || skb->len < l2 + TEREDO_IP6_LEN)
		goto other;
	if (l2 && *(__be16 *)(data + 12) != bpf_htons(ETH_P_IPV6))
		goto other;
	/* The core's first checks (receive_tun): version 6, payload length within the packet, a
	 * unicast destination, our own address as the source (else it drops: wrong_source). */
	if (ip6->version != 6 || TEREDO_IP6_LEN + bpf_ntohs(ip6->payload_len) > len)
		goto other;
	if (ip6->daddr.in6_u.u6_addr8[0] == 0xff || !is_ours(cfg, ip6->saddr.in6_u.u6_addr8))
		goto other;
	/* Case 1: a trusted peer (a Teredo peer, or a native destination at its relay)... */
	__builtin_memcpy(key.addr, ip6->daddr.in6_u.u6_addr8, 16);
	peer = bpf_map_lookup_elem(&client_peers, &key);
	if (!peer) {
		teredo_count(&client_counters, C_ENCAP_NO_PEER);
		return TC_ACT_OK;
	}
	/* ... and a valid one; else the core bubbles or pings it again. */
	if (!peer_valid(peer)) {
		teredo_count(&client_counters, C_ENCAP_STALE);
		return TC_ACT_OK;
	}
	gso = skb->gso_size != 0;
	if (gso && (!(cfg->flags & CFG_DEVICE_CSUM) || ip6->nexthdr != IPPROTO_TCP)) {
		/* A GSO packet (a local TCP socket's bulk write, tcp_sendmsg builds them whatever
		 * the TUN's features) is encapsulated as a UDP tunnel packet below, segmented by
		 * the output device (software GSO: validate_xmit_skb) with complete checksums:
		 * only where that device completes checksums (else its TSO would carry the whole
		 * packet, partial checksums inside, to the next namespace). Other GSO kinds
		 * (UDP_SEGMENT) are the TUN path's. */
		teredo_count(&client_counters, C_ENCAP_PARTIAL);
		return TC_ACT_OK;
	}
	if (!gso && (ip6->nexthdr == IPPROTO_TCP || ip6->nexthdr == IPPROTO_UDP)) {
		__u32 at = ip6->nexthdr == IPPROTO_TCP ? 16 : 6;

		if (!(cfg->flags & CFG_DEVICE_CSUM) &&
		    bpf_skb_load_bytes(skb, l2 + TEREDO_IP6_LEN + at, &check, sizeof(check)) == 0 &&
		    teredo_ip6_l4_looks_partial(ip6, check)) {
			teredo_count(&client_counters, C_ENCAP_PARTIAL);
			return TC_ACT_OK;
		}
	}
	if (len > 0xffff - TEREDO_ENCAP_LEN)
		goto other;
	teredo_outer_fill(&outer, cfg->ipv4, cfg->port, peer->ipv4, peer->port, len);
	/* A GSO packet keeps its segment size (BPF_F_ADJ_ROOM_FIXED_GSO): each segment is the
	 * one the TUN path would read (the TUN's MTU made the MSS), with the outer header in
	 * front, which the segmentation copies to each (lengths, IPv4 ID + n and header checksum
	 * rewritten per segment; UDP checksum 0, SKB_GSO_UDP_TUNNEL). */
	if (gso ? encap_gso(skb, l2, &outer) : teredo_encap(skb, l2, &outer)) {
		teredo_count(&client_counters, C_ENCAP_ERROR);
		return TC_ACT_OK; /* adjust_room failed before changing the packet */
	}
	if (l2) {
		if (teredo_set_ethertype(skb, ETH_P_IP))
			return TC_ACT_SHOT; /* the packet is half made: nothing else may see it */
	} else {
		/* From the TUN (L3) to an Ethernet device: an L2 header for bpf_redirect_neigh,
		 * which fills in the addresses. */
		__be16 proto = bpf_htons(ETH_P_IP);

		if (bpf_skb_change_head(skb, ETH_HLEN, 0) ||
		    bpf_skb_store_bytes(skb, 12, &proto, sizeof(proto), 0))
			return TC_ACT_SHOT;
	}
	teredo_touch(&peer->last_tx);
	teredo_count(&client_counters, C_ENCAP);
	if (gso)
		teredo_count(&client_counters, C_ENCAP_GSO);
	return bpf_redirect_neigh(cfg->out_ifindex, NULL, 0, 0);
other:
	teredo_count(&client_counters, C_ENCAP_OTHER);
	return TC_ACT_OK;
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
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + l2;
	struct udphdr *udp = (void *)(ip + 1);
	struct ipv6hdr *ip6 = (void *)(udp + 1);
	struct teredo_peer *peer;
	struct teredo_key key;
	__u32 tot, ulen;
	__u8 s0;

	if ((void *)(ip6 + 1) > data_end)
		goto other;
	if (l2 && *(__be16 *)(data + 12) != bpf_htons(ETH_P_IP))
		goto other;
	if (skb->gso_segs > 1 || skb->gso_size)
		goto other; /* an aggregate (GRO): the stack splits it on the Python path */
	/* Outer: IPv4 without options, not a fragment, UDP to the client socket. */
	if (ip->version != 4 || ip->ihl != 5 || ip->protocol != IPPROTO_UDP ||
	    (ip->frag_off & bpf_htons(0x3fff)))
		goto other;
	if (cfg->ipv4 && ip->daddr != cfg->ipv4)
		goto other;
	if (udp->dest != cfg->port)
		goto other;
	/* From the server's port: RAs, relayed bubbles with origin indications, our pings'
	 * replies: the core's full path (its fast path leaves them too). */
	if (udp->source == bpf_htons(TEREDO_SERVER_PORT))
		goto other;
	tot = bpf_ntohs(ip->tot_len);
	ulen = bpf_ntohs(udp->len);
	if (tot + l2 > skb->len || ulen + sizeof(*ip) != tot)
		goto other;
	/* The UDP checksum, as at the relay (teredo_relay.bpf.c): none, verified by the device,
	 * or left to the device by a sender of this host; otherwise the stack checks it. */
	if (udp->check && bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY) < 0 &&
	    !teredo_udp4_looks_partial(ip, udp))
		goto other;
	/* Inner (the core's receive_udp fast path): a bare IPv6 packet filling the datagram (no
	 * authentication, origin indication or trailer), TCP or UDP (not a bubble, not ICMPv6:
	 * an echo reply may settle a ping test), for our own address, from a source that is not
	 * multicast, link-local, :: or ::1 (section 5.2.3). */
	if (ip6->version != 6 || TEREDO_IP6_LEN + bpf_ntohs(ip6->payload_len) + sizeof(*udp) != ulen)
		goto other;
	if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP)
		goto other;
	if (!is_ours(cfg, ip6->daddr.in6_u.u6_addr8))
		goto other;
	s0 = ip6->saddr.in6_u.u6_addr8[0];
	if (s0 == 0x00 || s0 == 0xfe || s0 == 0xff)
		goto other;
	/* Case 1: a trusted peer, heard at its recorded mapping. */
	__builtin_memcpy(key.addr, ip6->saddr.in6_u.u6_addr8, 16);
	peer = bpf_map_lookup_elem(&client_peers, &key);
	if (!peer) {
		teredo_count(&client_counters, C_DECAP_NO_PEER);
		return TC_ACT_OK;
	}
	if (peer->ipv4 != ip->saddr || peer->port != udp->source) {
		teredo_count(&client_counters, C_DECAP_MAPPING);
		return TC_ACT_OK;
	}
	/* A stale peer may have a bubble or ping procedure running in the core, which this
	 * reception settles (and flushes its queue): the core's job. */
	if (!peer_valid(peer)) {
		teredo_count(&client_counters, C_DECAP_STALE);
		return TC_ACT_OK;
	}
	if (teredo_decap(skb)) {
		teredo_count(&client_counters, C_DECAP_ERROR);
		return TC_ACT_OK;
	}
	if (l2 && teredo_set_ethertype(skb, ETH_P_IPV6))
		return TC_ACT_SHOT;
	teredo_touch(&peer->last_rx);
	teredo_count(&client_counters, C_DECAP);
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
