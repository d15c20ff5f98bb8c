// The HTTP/1.1 transport (Boost.Beast over Asio): one acceptor and a bounded pool of I/O
// threads running one io_context. Each connection is a session on its own strand; requests are
// read (keep-alive, pipelining in order), handed to the Handler as plain HttpRequests, and
// answered through the Responder / StreamWriter of server/http.h. No thread per connection:
// thousands of idle or streaming connections cost a socket and a few buffers each.
//
// What the transport answers by itself, always with `Connection: close` and TGI's error JSON
// {"error": ..., "error_type": ...}:
//   400 bad_request        malformed HTTP (the connection is closed)
//   413 payload_too_large  a body over payload_limit (checked on Content-Length before reading)
//   431 bad_request        request line + headers over header_limit
//   500 internal           the handler threw before answering, or dropped the Responder unused
//   503 overloaded         more than max_connections connections at once
//
// Streams: stream() sends 200 with text/event-stream, Cache-Control: no-cache and
// X-Accel-Buffering: no, then chunked transfer encoding (HTTP/1.0 clients: raw bytes and close).
//
// Disconnects: from the moment a request is handed to the handler until its answer is sent
// (a whole response or a stream) a read stays pending on the socket, so a peer that goes away
// (EOF or reset) is noticed at once, not only at the next write, and the request's
// on_disconnect callbacks fire (Responder's and StreamWriter's: one registration per request,
// kept across stream()). Bytes a client pipelines meanwhile are not a disconnect: they are kept
// (up to 64 KiB) for its next request.
//
// Timeouts: an idle keep-alive connection (or one trickling its request line and headers) is
// closed after keep_alive_timeout_s; a body must arrive within request_timeout_s; a write that
// does not complete within write_timeout_s (a client that stopped reading) closes the
// connection, which counts as a disconnect for a stream. No timeout applies while the handler
// works or while a stream waits for its next chunk.
//
// Threads: start(), port(), stop_accepting() and stop() may be called from any thread that is not
// an I/O thread. The handler runs on an I/O thread and must not block.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "server/http.h"

namespace mil::server {

struct HttpServerOptions {
  std::string host = "127.0.0.1";  // address or name to bind ("0.0.0.0", "::", "localhost")
  uint16_t port = 3000;            // 0 = an ephemeral port (see HttpServer::port())
  int io_threads = 2;              // threads running the io_context
  size_t payload_limit = 2000000;  // bytes of a request body
  size_t header_limit = 64 * 1024; // bytes of the request line and headers
  int max_connections = 10000;     // open connections; more are answered 503 and closed
  double keep_alive_timeout_s = 60;   // idle connection between requests
  double request_timeout_s = 60;      // reading a request body
  double write_timeout_s = 60;        // one write (all bytes queued when it began)
  double stop_timeout_s = 30;         // stop(): how long responses in flight may take
};

class HttpServer {
 public:
  // `handler` is called for every request, on an I/O thread.
  HttpServer(HttpServerOptions options, Handler handler);
  // stop() if still running.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds, listens and starts the I/O threads. Throws mil::Error when the address cannot be
  // resolved or bound. Once.
  void start();
  // The bound port (the ephemeral one when options.port was 0); valid after start().
  uint16_t port() const;
  // Closes the listening socket: new connections are refused, open ones carry on (new requests
  // on kept-alive connections are still served).
  void stop_accepting();
  // Graceful stop: stops accepting, closes idle connections, lets responses and streams in
  // flight finish (connections close after their current response) for up to
  // options.stop_timeout_s, then closes whatever is left (requests still being handled and
  // streams see on_disconnect) and joins the I/O threads. Idempotent. Writes that arrive
  // afterwards are dropped.
  void stop();

  // Connections open now (for tests and logs).
  int64_t open_connections() const;

  struct Core;  // shared with the sessions (defined in http_server.cpp)

 private:
  std::shared_ptr<Core> core_;
};

}  // namespace mil::server
