# Groups a flat perf profile (`perf report --no-children --sort dso,symbol --stdio -g none`) by
# what the time is spent on, for bench/run --profile. Patterns are checked in order.
{
  pct = $1
  sub(/%/, "", pct)
  line = $0
  if (pct + 0 == 0) next
  if (line ~ /\[kernel/) {
    if (line ~ /_raw_spin_unlock_irqrestore/) c = "kernel: _raw_spin_unlock_irqrestore (wakeups, softirq exit)"
    else if (line ~ /tcp|ip_|skb|inet|net_|__dev|loopback|sock|nf_|__netif|sk_|copy_|_iter/) c = "kernel: TCP over loopback (send, receive, softirq)"
    else if (line ~ /sched|switch|futex|wake|irqentry|pick_|enqueue|dequeue|update_curr|idle/) c = "kernel: scheduler, wakeups, futex"
    else c = "kernel: syscall entry, epoll, other"
  }
  else if (line ~ /malloc|free|_int_|unlink_chunk|realloc|memmove|memcpy|memset|consolidate|tcache|calloc|je_|mi_/) c = "allocator + memcpy"
  else if (line ~ /tracing|fmt::|Display|Debug|format|write_str|pad_integral|flt2dec|nu_ansi_term|sharded_slab/) c = "tracing + formatting (access log, spans)"
  else if (line ~ /url::|idna|percent_encoding/) c = "url parsing (target URL, upstream URL)"
  else if (line ~ /serde/) c = "serde_json (answer check, input)"
  else if (line ~ /jsonschema|referencing/) c = "schema validation"
  else if (line ~ /hyper::proto|httparse|h1::|hyper::body|Dispatcher/) c = "hyper HTTP/1 codec + dispatch"
  else if (line ~ /reqwest|hyper_util|hyper::client|hyper_rustls|pool::|Checkout/) c = "reqwest / hyper-util client, pool"
  else if (line ~ /tokio|mio|epoll|parking|Notify|mpsc|waker|Waker/) c = "tokio runtime, channels"
  else if (line ~ /http::|Header|hashbrown|BuildHasher|sip::/) c = "http header maps, hashing"
  else if (line ~ /moka|crossbeam|cht::|quanta/) c = "moka caches (tokens, ownership)"
  else if (line ~ /jsonwebtoken|sha2|hmac|p256|ecdsa|rapidhash/) c = "JWT, token-cache hashing"
  else if (line ~ /metrics|prometheus|sketches|histogram/) c = "metrics"
  else if (line ~ /axum|tower|matchit/) c = "axum / tower routing, middleware"
  else if (line ~ /falgate::/) c = "falgate's own functions"
  else if (line ~ /bytes::|futures_util|core::pin|Vec<T|alloc::|core::str|btree/) c = "bytes, futures, std collections"
  else c = "other"
  share[c] += pct
}
END { for (c in share) printf "%6.1f%%  %s\n", share[c], c }
