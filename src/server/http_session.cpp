// One HTTP connection of the transport (server/http_server.h): a Session does everything on
// its strand (the socket's executor): reading requests, calling the handler, writing responses
// and streams, timeouts, disconnect detection. Responders and StreamWriters are thin handles
// that post onto that strand from whatever thread calls them; a request sequence number makes
// late calls for an earlier request on a kept-alive connection harmless.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/string_body.hpp>
#include <cstdio>
#include <deque>
#include <functional>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "server/http_session.h"

namespace mil::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

std::string error_json(std::string_view message, std::string_view type) {
  return nlohmann::json{{"error", message}, {"error_type", type}}.dump(
      -1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Beast's string_view is boost::string_view on Boost 1.74, boost::core::string_view later.
std::string_view sv(beast::string_view s) { return {s.data(), s.size()}; }

std::chrono::steady_clock::duration to_duration(double s) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(s));
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

// A header the handler may set: no CR/LF/NUL (response splitting), and not one of those the
// transport owns (framing and connection management).
bool allowed_header(const std::string& name, const std::string& value) {
  if (name.empty()) return false;
  for (const std::string* s : {&name, &value}) {
    for (char c : *s) {
      if (c == '\r' || c == '\n' || c == '\0') return false;
    }
  }
  for (std::string_view owned : {"content-length", "transfer-encoding", "connection", "content-type"}) {
    if (iequals(name, owned)) return false;
  }
  return name.find(':') == std::string::npos && name.find(' ') == std::string::npos;
}

std::string status_line(int status) {
  std::string_view reason = sv(http::obsolete_reason(static_cast<http::status>(status)));
  if (reason.empty() || reason.front() == '<') reason = "Unknown";
  std::string line = "HTTP/1.1 ";
  line += std::to_string(status);
  line += ' ';
  line += reason;
  line += "\r\n";
  return line;
}

void append_headers(std::string& head,
                    const std::vector<std::pair<std::string, std::string>>& headers) {
  for (const auto& [name, value] : headers) {
    if (!allowed_header(name, value)) {
      spdlog::warn("http: dropped response header '{}' (reserved or invalid)", name);
      continue;
    }
    head += name;
    head += ": ";
    head += value;
    head += "\r\n";
  }
}

// What the handles of one request (its Responder and, once streaming, its StreamWriter) share
// with the session: the disconnect callbacks and the flags that decide whether they fire.
// Guarded by `mu` because the handles' methods run on any thread.
struct ExchangeState {
  std::mutex mu;
  std::vector<std::function<void()>> on_disconnect;
  bool answered = false;  // respond() or the stream's finish() was called: no callback fires
  bool gone = false;      // the connection closed before the response was complete
  bool ended = false;     // the response was handed over completely; no callback can fire
  std::atomic<bool> closed{false};

  // Registers a callback (any thread); runs it at once if the peer is already gone.
  void add(std::function<void()> callback) {
    if (!callback) return;
    std::unique_lock lock(mu);
    if (answered || ended) return;
    if (gone) {
      lock.unlock();
      run(callback);
      return;
    }
    on_disconnect.push_back(std::move(callback));
  }
  // respond() / finish() was called: the callbacks can no longer fire. They are dropped at
  // once (they may hold the responder or the writer: a cycle).
  // False when it was answered already.
  bool answer() {
    std::vector<std::function<void()>> dropped;  // destroyed after the lock is released
    std::lock_guard lock(mu);
    if (answered) return false;
    answered = true;
    dropped.swap(on_disconnect);
    return true;
  }
  // The connection is gone (on the session's strand). Fires the callbacks unless answered.
  void peer_gone() {
    std::vector<std::function<void()>> callbacks;
    {
      std::lock_guard lock(mu);
      closed = true;
      if (gone || ended) return;
      gone = true;
      callbacks.swap(on_disconnect);
      if (answered) callbacks.clear();
    }
    for (auto& callback : callbacks) run(callback);
  }
  // The response was sent completely (or handed to the socket). Drops the callbacks.
  void end() {
    std::vector<std::function<void()>> dropped;
    std::lock_guard lock(mu);
    closed = true;
    ended = true;
    dropped.swap(on_disconnect);
  }

 private:
  static void run(const std::function<void()>& callback) {
    try {
      callback();
    } catch (const std::exception& e) {
      spdlog::error("http: on_disconnect callback threw: {}", e.what());
    } catch (...) {
      spdlog::error("http: on_disconnect callback threw");
    }
  }
};

}  // namespace

namespace detail {

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(std::shared_ptr<HttpServer::Core> core, tcp::socket socket)
      : core_(std::move(core)),
        options_(core_->options),
        socket_(std::move(socket)),
        executor_(socket_.get_executor()),
        timer_(executor_) {
    error_code ec;
    const tcp::endpoint peer = socket_.remote_endpoint(ec);
    if (!ec) remote_ = peer.address().to_string() + ":" + std::to_string(peer.port());
  }

  ~Session() {
    // Only reachable without close() when a post was refused after stop(); the socket closes
    // with this object.
    if (phase_ != Phase::Closed) core_->session_closed();
    core_->session_destroyed(this);
  }

  // Registers and starts reading; `reject` answers 503 (too many connections) and closes.
  void start(bool reject) {
    core_->session_opened(this, weak_from_this());
    asio::post(executor_, [self = shared_from_this(), reject] {
      if (reject) {
        self->reply_and_close(503, "too many open connections", "overloaded");
      } else {
        self->read_header();
      }
    });
  }

  // ---- calls from Responder / StreamWriter (any thread) ----
  void post_respond(uint64_t seq, HttpResponse response) {
    core_->post_from_any_thread(executor_, [self = shared_from_this(), seq,
                                            r = std::move(response)]() mutable {
      self->respond(seq, std::move(r));
    });
  }
  void post_stream(uint64_t seq, std::shared_ptr<ExchangeState> state,
                   std::vector<std::pair<std::string, std::string>> headers) {
    const bool posted = core_->post_from_any_thread(
        executor_, [self = shared_from_this(), seq, state, h = std::move(headers)]() mutable {
          self->start_stream(seq, std::move(state), std::move(h));
        });
    if (!posted) state->closed = true;
  }
  void post_write(uint64_t seq, std::string chunk) {
    core_->post_from_any_thread(executor_, [self = shared_from_this(), seq,
                                            c = std::move(chunk)]() mutable {
      self->write_chunk(seq, std::move(c));
    });
  }
  void post_finish(uint64_t seq) {
    core_->post_from_any_thread(executor_,
                                [self = shared_from_this(), seq] { self->finish_stream(seq); });
  }
  // stop(): idle connections close now, the others after their current response.
  void post_drain() {
    core_->post_from_any_thread(executor_, [self = shared_from_this()] {
      if (self->phase_ == Phase::ReadingHeader && self->buffer_.size() == 0) self->close();
    });
  }
  void post_close() {
    core_->post_from_any_thread(executor_, [self = shared_from_this()] { self->close(); });
  }

 private:
  enum class Phase { ReadingHeader, ReadingBody, Handling, Responding, Streaming, Lingering, Closed };

  // ---- timer: one deadline for whatever the session waits on ----
  void arm_timer(double timeout_s) {
    const uint64_t generation = ++timer_generation_;
    timer_.expires_after(to_duration(timeout_s));
    timer_.async_wait([self = shared_from_this(), generation](error_code ec) {
      if (ec || generation != self->timer_generation_ || self->phase_ == Phase::Closed) return;
      self->on_timeout();
    });
  }
  void disarm_timer() {
    ++timer_generation_;
    timer_.cancel();
  }
  void on_timeout() {
    switch (phase_) {
      case Phase::ReadingHeader:
      case Phase::ReadingBody:
      case Phase::Lingering:
        close();
        return;
      case Phase::Responding:
      case Phase::Streaming:
        spdlog::debug("http {}: a write did not complete within the write timeout; closing",
                      remote_);
        close();
        return;
      case Phase::Handling:
      case Phase::Closed:
        return;
    }
  }

  // ---- reading a request ----
  void read_header() {
    phase_ = Phase::ReadingHeader;
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(options_.header_limit));
    parser_->body_limit(options_.payload_limit);
    arm_timer(options_.keep_alive_timeout_s);
    http::async_read_header(socket_, buffer_, *parser_,
                            [self = shared_from_this()](error_code ec, size_t) {
                              self->on_header(ec);
                            });
  }

  void on_header(error_code ec) {
    if (phase_ == Phase::Closed) return;
    if (ec) return on_read_error(ec);
    phase_ = Phase::ReadingBody;
    arm_timer(options_.request_timeout_s);
    const auto& msg = parser_->get();
    const auto expect = msg.find(http::field::expect);
    if (expect != msg.end() && iequals(sv(expect->value()), "100-continue") && !parser_->is_done()) {
      // curl waits for this before sending a large body.
      static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      asio::async_write(socket_, asio::buffer(kContinue),
                        [self = shared_from_this()](error_code wec, size_t) {
                          if (self->phase_ == Phase::Closed) return;
                          if (wec) return self->close();
                          self->read_body();
                        });
      return;
    }
    read_body();
  }

  void read_body() {
    if (parser_->is_done()) return on_body(error_code{});
    http::async_read(socket_, buffer_, *parser_,
                     [self = shared_from_this()](error_code ec, size_t) { self->on_body(ec); });
  }

  void on_body(error_code ec) {
    if (phase_ == Phase::Closed) return;
    if (ec) return on_read_error(ec);
    handle_request();
  }

  void on_read_error(error_code ec) {
    if (ec == http::error::body_limit) {
      return reply_and_close(413,
                             "request body is larger than the payload limit of " +
                                 std::to_string(options_.payload_limit) + " bytes",
                             "payload_too_large");
    }
    if (ec == http::error::header_limit) {
      return reply_and_close(431, "request headers are too large", "bad_request");
    }
    if (ec.category() == http::make_error_code(http::error::bad_target).category() &&
        ec != http::error::end_of_stream && ec != http::error::partial_message) {
      return reply_and_close(400, "malformed HTTP request: " + ec.message(), "bad_request");
    }
    // The peer closed or reset, or the timer closed the socket.
    close();
  }

  void handle_request() {
    phase_ = Phase::Handling;
    disarm_timer();
    auto msg = parser_->release();
    parser_.reset();
    version_ = msg.version();
    keep_alive_ = msg.keep_alive();

    HttpRequest request;
    head_request_ = msg.method() == http::verb::head;
    request.method = std::string(sv(msg.method_string()));
    std::string_view target = sv(msg.target());
    if (target.rfind("http://", 0) == 0 || target.rfind("https://", 0) == 0) {
      // absolute-form (proxies): keep the path
      const size_t authority = target.find("//") + 2;
      const size_t slash = target.find('/', authority);
      target = slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
    }
    const size_t question = target.find('?');
    request.path = std::string(target.substr(0, question));
    if (question != std::string_view::npos) request.query = std::string(target.substr(question + 1));
    for (const auto& field : msg) {
      std::string name(sv(field.name_string()));
      for (char& c : name) c = (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c;
      const std::string_view value = sv(field.value());
      auto [it, inserted] = request.headers.try_emplace(std::move(name), value);
      if (!inserted) {  // repeated header: RFC 9110 list syntax
        it->second += ", ";
        it->second += value;
      }
    }
    request.body = std::move(msg.body());
    request.remote = remote_;

    const uint64_t seq = ++seq_;
    exchange_ = std::make_shared<ExchangeState>();
    auto responder = std::make_shared<ResponderImpl>(shared_from_this(), seq, exchange_);
    try {
      core_->handler(request, responder);
    } catch (const std::exception& e) {
      spdlog::error("http {} {} {}: handler threw: {}", remote_, request.method, request.path,
                    e.what());
      if (responder->claim()) respond(seq, internal_error(e.what()));
    } catch (...) {
      spdlog::error("http {} {} {}: handler threw", remote_, request.method, request.path);
      if (responder->claim()) respond(seq, internal_error("unknown error"));
    }
    // While the answer is being worked on, keep a read pending so that a peer that goes away
    // is noticed at once (on_disconnect); bytes it pipelines meanwhile are kept in buffer_.
    // (Answers always come through a post, so the phase is still Handling here unless the
    // handler threw.)
    if (phase_ == Phase::Handling && !watch_pending_) watch();
  }

  // ---- whole responses ----
  static HttpResponse internal_error(std::string_view message) {
    HttpResponse r;
    r.status = 500;
    r.body = error_json(message, "internal");
    return r;
  }

  bool closing_after_response() const {
    return !keep_alive_ || core_->draining.load(std::memory_order_relaxed);
  }

  void respond(uint64_t seq, HttpResponse response) {
    if (seq != seq_ || phase_ != Phase::Handling) return;  // stale, or the connection closed
    if (exchange_) {  // answered: no disconnect callback may fire any more
      exchange_->end();
      exchange_.reset();
    }
    const bool close_after = closing_after_response();
    const bool bodyless = response.status < 200 || response.status == 204 || response.status == 304;
    std::string head = status_line(response.status);
    if (!bodyless) {
      head += "Content-Type: " + response.content_type + "\r\n";
      head += "Content-Length: " + std::to_string(response.body.size()) + "\r\n";
    }
    append_headers(head, response.headers);
    if (close_after) {
      head += "Connection: close\r\n";
    } else if (version_ < 11) {
      head += "Connection: keep-alive\r\n";
    }
    head += "\r\n";
    phase_ = Phase::Responding;
    out_.clear();
    out_.push_back(std::move(head));
    if (!bodyless && !head_request_ && !response.body.empty()) {
      out_.push_back(std::move(response.body));
    }
    out_buffers_.clear();
    for (const auto& s : out_) out_buffers_.emplace_back(s.data(), s.size());
    arm_timer(options_.write_timeout_s);
    asio::async_write(socket_, out_buffers_,
                      [self = shared_from_this(), close_after](error_code ec, size_t) {
                        if (self->phase_ == Phase::Closed) return;
                        self->out_.clear();
                        if (ec) return self->close();
                        self->after_response(close_after);
                      });
  }

  // A response (whole or streamed) was sent: linger and close, or read the next request. A
  // watch still pending owns buffer_ until it completes, so it is cancelled first.
  void after_response(bool close_after) {
    disarm_timer();
    if (close_after) {
      // The watch completes with operation_aborted (ignored: we are lingering); the linger's
      // own read starts after the cancel, so it is not affected.
      if (watch_pending_) socket_.cancel();
      return linger();
    }
    if (watch_pending_) {
      // Read the next request once the watch completed (on_watch).
      resume_after_watch_ = true;
      phase_ = Phase::ReadingHeader;  // for drain(): nothing is in flight on this connection
      socket_.cancel();
      return;
    }
    read_header();
  }

  // A response the transport makes itself (errors), then close. Also used before any request
  // was read (reject), so it does not depend on the request state.
  void reply_and_close(int status, const std::string& message, std::string_view type) {
    keep_alive_ = false;
    head_request_ = false;
    phase_ = Phase::Handling;
    ++seq_;  // no responder may answer in our place
    HttpResponse r;
    r.status = status;
    r.body = error_json(message, type);
    respond(seq_, std::move(r));
  }

  // Half-closes and reads (discarding) until the peer closes or a short time passes, so that
  // a client still sending a body we refused gets our answer instead of a reset.
  void linger() {
    phase_ = Phase::Lingering;
    error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    if (ec) return close();
    arm_timer(core_->draining.load(std::memory_order_relaxed) ? 0.5 : 2.0);
    discard();
  }
  void discard() {
    linger_buffer_.resize(4096);
    socket_.async_read_some(asio::buffer(linger_buffer_),
                            [self = shared_from_this()](error_code ec, size_t) {
                              if (self->phase_ != Phase::Lingering) return;
                              if (ec) return self->close();
                              self->discard();
                            });
  }

  // ---- streams ----
  void start_stream(uint64_t seq, std::shared_ptr<ExchangeState> state,
                    std::vector<std::pair<std::string, std::string>> headers) {
    if (seq != seq_ || phase_ != Phase::Handling || state != exchange_) {
      state->peer_gone();
      return;
    }
    phase_ = Phase::Streaming;
    finish_requested_ = false;
    chunked_ = version_ >= 11;
    if (!chunked_) keep_alive_ = false;  // HTTP/1.0: the end of the body is the close
    std::string head = status_line(200);
    head += "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n";
    append_headers(head, headers);
    if (chunked_) head += "Transfer-Encoding: chunked\r\n";
    if (closing_after_response()) head += "Connection: close\r\n";
    head += "\r\n";
    queue_.push_back(std::move(head));
    if (!watch_pending_) watch();  // normally still pending from handle_request()
    flush();
  }

  void write_chunk(uint64_t seq, std::string chunk) {
    if (seq != seq_ || phase_ != Phase::Streaming || finish_requested_ || chunk.empty()) return;
    if (chunked_) {
      char size[24];
      const int n = std::snprintf(size, sizeof size, "%zx\r\n", chunk.size());
      queue_.emplace_back(size, static_cast<size_t>(n));
      queue_.push_back(std::move(chunk));
      queue_.emplace_back("\r\n");
    } else {
      queue_.push_back(std::move(chunk));
    }
    flush();
  }

  void finish_stream(uint64_t seq) {
    if (seq != seq_ || phase_ != Phase::Streaming || finish_requested_) return;
    finish_requested_ = true;
    if (chunked_) queue_.emplace_back("0\r\n\r\n");
    flush();
    if (!write_pending_) end_stream();
  }

  // One async_write at a time, gathering everything queued meanwhile.
  void flush() {
    if (write_pending_ || queue_.empty()) return;
    out_.clear();
    while (!queue_.empty()) {
      out_.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    out_buffers_.clear();
    for (const auto& s : out_) out_buffers_.emplace_back(s.data(), s.size());
    write_pending_ = true;
    arm_timer(options_.write_timeout_s);
    asio::async_write(socket_, out_buffers_, [self = shared_from_this()](error_code ec, size_t) {
      self->on_stream_written(ec);
    });
  }

  void on_stream_written(error_code ec) {
    write_pending_ = false;
    if (phase_ != Phase::Streaming) return;
    out_.clear();
    if (ec) return close();
    if (!queue_.empty()) return flush();
    disarm_timer();
    if (finish_requested_) end_stream();
  }

  void end_stream() {
    if (exchange_) {
      exchange_->end();
      exchange_.reset();
    }
    after_response(closing_after_response());
  }

  // A read kept pending from the moment a request is handed to the handler until its answer
  // was sent (whole or streamed): the client has nothing to send then, so an error or EOF means
  // the peer closed (or reset). Bytes that do arrive (a pipelined request) are kept in buffer_
  // for the next request's parse.
  void watch() {
    static constexpr size_t kMaxPipelined = 64 * 1024;
    if (buffer_.size() >= kMaxPipelined) return;  // stop reading; write errors still tell
    watch_pending_ = true;
    socket_.async_read_some(buffer_.prepare(4096),
                            [self = shared_from_this()](error_code ec, size_t n) {
                              self->on_watch(ec, n);
                            });
  }

  void on_watch(error_code ec, size_t n) {
    watch_pending_ = false;
    if (!ec) buffer_.commit(n);
    if (phase_ == Phase::Closed || phase_ == Phase::Lingering) return;
    if (resume_after_watch_) {
      resume_after_watch_ = false;
      if (ec && ec != asio::error::operation_aborted) return close();
      return read_header();
    }
    if (ec) {
      if (ec == asio::error::operation_aborted) return;
      // A whole response is already on its way (no callback can fire): let its write finish;
      // the next read (or the write) tells what became of the peer.
      if (phase_ == Phase::Responding) return;
      spdlog::debug("http {}: peer went away while its request was {} ({})", remote_,
                    phase_ == Phase::Streaming ? "streamed" : "handled", ec.message());
      return close();
    }
    watch();
  }

  // ---- closing ----
  void close() {
    if (phase_ == Phase::Closed) return;
    phase_ = Phase::Closed;
    disarm_timer();
    error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
    queue_.clear();
    core_->session_closed();
    if (exchange_) {  // a request being handled or streamed: its disconnect callbacks fire
      auto exchange = std::move(exchange_);
      exchange->peer_gone();
    }
  }

  // ---- the handles given to the handler ----
  class StreamWriterImpl final : public StreamWriter {
   public:
    StreamWriterImpl(std::shared_ptr<Session> session, uint64_t seq,
                     std::shared_ptr<ExchangeState> state)
        : session_(std::move(session)), seq_(seq), state_(std::move(state)) {}
    void write(std::string chunk) override {
      // Writes after finish() are dropped on the strand (they are queued behind it).
      if (state_->closed.load(std::memory_order_relaxed)) return;
      session_->post_write(seq_, std::move(chunk));
    }
    void finish() override {
      // Never calls back after finish(): the callbacks are dropped (unlocked) here.
      if (!state_->answer()) return;
      session_->post_finish(seq_);
    }
    bool closed() const override { return state_->closed.load(); }
    void on_disconnect(std::function<void()> callback) override {
      state_->add(std::move(callback));
    }

   private:
    std::shared_ptr<Session> session_;
    uint64_t seq_;
    std::shared_ptr<ExchangeState> state_;
  };

  class ResponderImpl final : public Responder {
   public:
    ResponderImpl(std::shared_ptr<Session> session, uint64_t seq,
                  std::shared_ptr<ExchangeState> state)
        : session_(std::move(session)), seq_(seq), state_(std::move(state)) {}
    ~ResponderImpl() override {
      if (claim()) {
        state_->answer();
        session_->post_respond(seq_, internal_error("the handler did not answer"));
      }
    }
    void respond(HttpResponse response) override {
      if (!claim()) throw std::logic_error("Responder: respond/stream called twice");
      state_->answer();  // from here on no disconnect callback fires
      session_->post_respond(seq_, std::move(response));
    }
    std::shared_ptr<StreamWriter> stream(
        std::vector<std::pair<std::string, std::string>> headers) override {
      if (!claim()) throw std::logic_error("Responder: respond/stream called twice");
      // The writer shares this request's state: callbacks set here keep watching the stream.
      session_->post_stream(seq_, state_, std::move(headers));
      return std::make_shared<StreamWriterImpl>(session_, seq_, state_);
    }
    void on_disconnect(std::function<void()> callback) override {
      state_->add(std::move(callback));
    }
    // True for the first caller: it answers.
    bool claim() { return !used_.exchange(true); }

   private:
    std::shared_ptr<Session> session_;
    uint64_t seq_;
    std::shared_ptr<ExchangeState> state_;
    std::atomic<bool> used_{false};
  };

  const std::shared_ptr<HttpServer::Core> core_;
  const HttpServerOptions& options_;
  tcp::socket socket_;
  const tcp::socket::executor_type executor_;  // the session's strand
  asio::steady_timer timer_;
  uint64_t timer_generation_ = 0;
  std::string remote_;
  Phase phase_ = Phase::ReadingHeader;

  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  uint64_t seq_ = 0;  // of the request being answered
  unsigned version_ = 11;
  bool keep_alive_ = false;
  bool head_request_ = false;

  // Output: queue_ fills while out_ (referenced by out_buffers_) is being written.
  std::deque<std::string> queue_;
  std::vector<std::string> out_;
  std::vector<asio::const_buffer> out_buffers_;
  bool write_pending_ = false;
  std::vector<char> linger_buffer_;

  std::shared_ptr<ExchangeState> exchange_;  // the request being handled or streamed
  bool chunked_ = true;
  bool finish_requested_ = false;
  bool watch_pending_ = false;
  bool resume_after_watch_ = false;
};

void start_session(std::shared_ptr<HttpServer::Core> core, tcp::socket socket, bool reject) {
  std::make_shared<Session>(std::move(core), std::move(socket))->start(reject);
}
void drain_session(const std::shared_ptr<Session>& session) { session->post_drain(); }
void close_session(const std::shared_ptr<Session>& session) { session->post_close(); }

}  // namespace detail
}  // namespace mil::server
