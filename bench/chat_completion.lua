-- wrk script for bench/proxy_bench.py: POST a small, realistic chat completion over
-- keep-alive, asking the simulated upstream for 899 bytes of answer text (x-sim-text), so
-- that the JSON answer is about 1.2 KB. The same request goes direct and through the proxy;
-- only the URL's path differs.
--
-- At the end it prints one line, "WRK_JSON {...}", with the counts and the latency
-- percentiles in microseconds, which proxy_bench.py reads instead of wrk's text report.

local sentence = "The quick brown fox jumps over the lazy dog. "
local text = string.rep(sentence, 20):sub(1, 899) -- ends in "dog.", no trailing space

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-client"
wrk.headers["x-sim-text"] = text
wrk.body = '{"model":"glm-4.6","messages":['
  .. '{"role":"system","content":"You are a helpful assistant."},'
  .. '{"role":"user","content":"Summarise the plot of Hamlet in three sentences."}],'
  .. '"max_tokens":256,"temperature":0.7}'

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,'
      .. '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,'
      .. '"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"mean_us":%.1f,"max_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max))
end
