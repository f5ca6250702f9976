//! The benchmark's ceiling: tiny_http 0.12 on one handler thread, answering "hello" to every
//! request with no session work. `hello-ceiling 127.0.0.1:PORT`.

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8090".into());
    let server = match tiny_http::Server::http(&addr) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("hello-ceiling: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("hello-ceiling listening on http://{addr}/");
    for request in server.incoming_requests() {
        let _ = request.respond(tiny_http::Response::from_string("hello"));
    }
}
