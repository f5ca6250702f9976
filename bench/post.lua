-- wrk: send every request as an empty POST (the counter workloads).
wrk.method = "POST"
wrk.body = ""
