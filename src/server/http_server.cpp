// The HTTP transport's listener and lifecycle (server/http_server.h): the io_context and its
// I/O threads, the acceptor, and graceful stop. Connections are sessions (http_session.cpp).
#include "server/http_server.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <string>

#include "core/error.h"
#include "server/http_session.h"

namespace mil::server {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

std::chrono::steady_clock::duration to_duration(double s) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(s));
}

}  // namespace

void HttpServer::Core::do_accept(const std::shared_ptr<Core>& self) {
  acceptor.async_accept(asio::make_strand(ioc), [self](error_code ec, tcp::socket socket) {
    if (!self->acceptor.is_open()) return;
    if (ec) {
      if (ec == asio::error::operation_aborted) return;
      // EMFILE and friends: back off instead of spinning.
      spdlog::warn("http: accept failed: {}", ec.message());
      self->accept_retry.expires_after(std::chrono::milliseconds(50));
      self->accept_retry.async_wait([self](error_code wait_ec) {
        if (!wait_ec && self->acceptor.is_open()) self->do_accept(self);
      });
      return;
    }
    error_code nodelay_ec;
    socket.set_option(tcp::no_delay(true), nodelay_ec);  // SSE events are small
    const bool reject =
        self->open_relaxed.load(std::memory_order_relaxed) >= self->options.max_connections;
    detail::start_session(self, std::move(socket), reject);
    self->do_accept(self);
  });
}

HttpServer::HttpServer(HttpServerOptions options, Handler handler)
    : core_(std::make_shared<Core>(std::move(options), std::move(handler))) {
  MIL_CHECK(core_->handler, "HttpServer: no handler");
  MIL_CHECK(core_->options.io_threads >= 1, "HttpServer: io_threads must be at least 1");
}

HttpServer::~HttpServer() { stop(); }

void HttpServer::start() {
  Core& c = *core_;
  {
    std::lock_guard lock(c.lifecycle_mu);
    MIL_CHECK(!c.started, "HttpServer: started twice");
    c.started = true;
  }
  error_code ec;
  tcp::resolver resolver(c.ioc);
  const auto results = resolver.resolve(c.options.host, std::to_string(c.options.port),
                                        tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec || results.empty()) {
    fail("cannot resolve '{}': {}", c.options.host, ec ? ec.message() : "no address");
  }
  const tcp::endpoint endpoint = results.begin()->endpoint();
  const auto bind_fail = [&](const char* what) {
    fail("cannot listen on {}:{} ({}): {}", c.options.host, c.options.port, what, ec.message());
  };
  if (c.acceptor.open(endpoint.protocol(), ec)) bind_fail("open");
  if (c.acceptor.set_option(asio::socket_base::reuse_address(true), ec)) bind_fail("reuse_address");
  if (c.acceptor.bind(endpoint, ec)) bind_fail("bind");
  if (c.acceptor.listen(asio::socket_base::max_listen_connections, ec)) bind_fail("listen");
  c.port = c.acceptor.local_endpoint().port();

  c.do_accept(core_);
  c.work.emplace(c.ioc.get_executor());
  c.threads.reserve(c.options.io_threads);
  for (int i = 0; i < c.options.io_threads; ++i) {
    c.threads.emplace_back([&c] {
      for (;;) {
        try {
          c.ioc.run();
          return;
        } catch (const std::exception& e) {
          spdlog::error("http: I/O thread caught: {}", e.what());
        }
      }
    });
  }
}

uint16_t HttpServer::port() const { return core_->port; }

int64_t HttpServer::open_connections() const {
  std::lock_guard lock(core_->sessions_mu);
  return core_->open;
}

void HttpServer::stop_accepting() {
  std::shared_ptr<Core> c = core_;
  c->post_from_any_thread(c->acceptor_strand, [c] {
    error_code ec;
    c->acceptor.close(ec);
    c->accept_retry.cancel();
  });
}

void HttpServer::stop() {
  Core& c = *core_;
  {
    std::lock_guard lock(c.lifecycle_mu);
    const bool running = c.started && !c.stopped;
    c.stopped = true;
    if (!running) return;
  }
  c.draining = true;
  stop_accepting();
  for (const auto& session : c.live_sessions()) detail::drain_session(session);
  if (!c.wait_closed(to_duration(c.options.stop_timeout_s))) {
    spdlog::warn("http: closing {} connections still busy after {} ms", open_connections(),
                 static_cast<int64_t>(c.options.stop_timeout_s * 1000));
    for (const auto& session : c.live_sessions()) detail::close_session(session);
    c.wait_closed(std::chrono::seconds(2));
  }
  c.work.reset();
  c.ioc.stop();
  for (std::thread& t : c.threads) t.join();
  c.threads.clear();
  for (const auto& session : c.live_sessions()) detail::close_session(session);  // run by poll() below
  {
    std::lock_guard lock(c.post_mu);
    c.posts_closed = true;
  }
  // Run what the closes left queued (aborted operations), so that no pending handler keeps a
  // session, and through it this core, alive.
  c.ioc.restart();
  c.ioc.poll();
}

}  // namespace mil::server
