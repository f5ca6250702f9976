-- wrk: the update workload. Every request is an empty POST that increments one of 64
-- counters in turn (.../incr/n0, n1, ... n63), so that each request really changes the
-- session even with 8 requests in flight at once, on every server.
wrk.method = "POST"
wrk.body = ""
local i = 0
request = function()
    i = i + 1
    return wrk.format(nil, wrk.path .. (i % 64))
end
