-- wrk: the update workload spread over many sessions. Every request is an empty POST that
-- increments one of 64 counters (.../incr/n0 ... n63) of the next session in turn, its
-- cookie taken from the file named after `--` (one NAME=VALUE a line), so that the writes
-- spread over every session in it rather than one hot session.
wrk.method = "POST"
wrk.body = ""
local cookies = {}
local i = 0
function init(args)
    for line in io.lines(args[1]) do
        if line ~= "" then
            cookies[#cookies + 1] = line
        end
    end
end
function request()
    i = i + 1
    local cookie = cookies[(i % #cookies) + 1]
    return wrk.format(nil, wrk.path .. (i % 64), { Cookie = cookie })
end
