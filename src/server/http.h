// The seam between the HTTP transport (http_server: Boost.Beast, asynchronous, a bounded
// pool of I/O threads) and the API (routes: TGI, OpenAI, LoRAX, adapter management). Routes see
// plain requests and answer with either a whole response or a stream; they never see sockets.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mil::server {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string path;    // target without the query string, e.g. "/generate"
  std::string query;   // after '?', "" when none
  std::map<std::string, std::string, std::less<>> headers;  // names lower-cased
  std::string body;
  std::string remote;  // peer address, for logs

  // Header value or "" (name in lower case).
  std::string_view header(std::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers
  std::string body;
};

// A streaming (SSE) response being written. The transport sends the status line and headers
// (200, text/event-stream, Cache-Control: no-cache, X-Accel-Buffering: no) before the first
// chunk. Every method is safe from any thread (the engine thread calls them); writes are queued
// and sent in order on the connection's strand. After the client goes away, writes are
// dropped and closed() turns true.
class StreamWriter {
 public:
  virtual ~StreamWriter() = default;
  // Queues raw bytes (a whole SSE event, e.g. "data:{...}\n\n").
  virtual void write(std::string chunk) = 0;
  // Ends the response once the queued chunks are sent (the connection may be kept alive).
  virtual void finish() = 0;
  virtual bool closed() const = 0;
  // Called once, on an I/O thread, when the peer disconnects before finish(); not called
  // after finish(). Set it before the first write; calls it at once if already disconnected.
  // The same registration as Responder::on_disconnect of the request that opened the stream:
  // callbacks set on either handle all fire (each once) on a disconnect.
  virtual void on_disconnect(std::function<void()> callback) = 0;
};

// A route handler answers with a whole response or takes over the stream. A handler runs on an
// I/O thread and must not block on the engine: it submits and returns.
class Responder {
 public:
  virtual ~Responder() = default;
  virtual void respond(HttpResponse response) = 0;
  // Switches to streaming with the given extra headers; only one of respond/stream, once.
  virtual std::shared_ptr<StreamWriter> stream(
      std::vector<std::pair<std::string, std::string>> headers = {}) = 0;
  // Called once, on an I/O thread, when the peer goes away (EOF or reset) before the response
  // is complete: while the handler works on a whole response, or after stream() until the
  // stream's finish(). Not called after respond() nor after finish(); called at once (on the
  // calling thread) if the peer is already gone. Every callback registered for the request,
  // here or on its StreamWriter, fires; each is released once it fired, after respond() or
  // when the stream ended. Bytes of a pipelined next request are not a disconnect; a client
  // that half-closes its side after sending the request counts as gone (as in most servers).
  virtual void on_disconnect(std::function<void()> callback) = 0;
};

using Handler = std::function<void(const HttpRequest&, std::shared_ptr<Responder>)>;

}  // namespace mil::server
