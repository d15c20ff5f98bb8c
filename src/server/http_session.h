// Internal to the HTTP transport (http_server.cpp, http_session.cpp): the state the server
// shares with its connections (HttpServer::Core) and the session entry points. Not for routes.
#pragma once

#include <algorithm>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "server/http_server.h"

namespace mil::server {

namespace detail {
class Session;  // one connection (http_session.cpp)

// Starts serving an accepted connection; `reject` answers 503 (too many connections) and closes.
void start_session(std::shared_ptr<HttpServer::Core> core, boost::asio::ip::tcp::socket socket,
                   bool reject);
// stop(): closes the connection if idle, else after its current response.
void drain_session(const std::shared_ptr<Session>& session);
// Closes the connection now (a stream in flight sees on_disconnect).
void close_session(const std::shared_ptr<Session>& session);
}  // namespace detail

struct HttpServer::Core {
  Core(HttpServerOptions o, Handler h)
      : options(std::move(o)),
        handler(std::move(h)),
        ioc(std::max(1, options.io_threads)),
        acceptor_strand(boost::asio::make_strand(ioc)),
        acceptor(acceptor_strand),
        accept_retry(acceptor_strand) {}

  const HttpServerOptions options;
  const Handler handler;
  boost::asio::io_context ioc;
  boost::asio::strand<boost::asio::io_context::executor_type> acceptor_strand;
  boost::asio::ip::tcp::acceptor acceptor;  // used on acceptor_strand only
  boost::asio::steady_timer accept_retry;   // after accept errors such as EMFILE
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work;
  std::vector<std::thread> threads;
  uint16_t port = 0;
  std::atomic<bool> draining{false};  // connections close after their current response

  std::mutex lifecycle_mu;
  bool started = false;
  bool stopped = false;

  // Posts from threads outside the session (responders, writers, stop) go through here so that
  // nothing is queued on the io_context once stop() has flushed it: a queued handler would
  // hold its session, and the session this core, forever.
  std::mutex post_mu;
  bool posts_closed = false;
  template <typename Executor, typename F>
  bool post_from_any_thread(const Executor& executor, F&& f) {
    std::lock_guard lock(post_mu);
    if (posts_closed) return false;
    boost::asio::post(executor, std::forward<F>(f));
    return true;
  }

  // Sessions alive, for stop(); `open` counts those whose connection is not closed yet.
  mutable std::mutex sessions_mu;
  std::condition_variable sessions_cv;
  std::unordered_map<detail::Session*, std::weak_ptr<detail::Session>> sessions;
  int64_t open = 0;
  std::atomic<int64_t> open_relaxed{0};  // the same, read without the lock (admission)

  void session_opened(detail::Session* s, std::weak_ptr<detail::Session> weak) {
    std::lock_guard lock(sessions_mu);
    sessions.emplace(s, std::move(weak));
    ++open;
    open_relaxed.store(open, std::memory_order_relaxed);
  }
  void session_closed() {
    std::lock_guard lock(sessions_mu);
    --open;
    open_relaxed.store(open, std::memory_order_relaxed);
    if (open == 0) sessions_cv.notify_all();
  }
  void session_destroyed(detail::Session* s) {
    std::lock_guard lock(sessions_mu);
    sessions.erase(s);
  }
  std::vector<std::shared_ptr<detail::Session>> live_sessions() {
    std::vector<std::shared_ptr<detail::Session>> out;
    std::lock_guard lock(sessions_mu);
    out.reserve(sessions.size());
    for (auto& [raw, weak] : sessions) {
      if (auto s = weak.lock()) out.push_back(std::move(s));
    }
    return out;
  }
  // Waits until no connection is open or `timeout` passed; true when none is open.
  bool wait_closed(std::chrono::steady_clock::duration timeout) {
    std::unique_lock lock(sessions_mu);
    return sessions_cv.wait_for(lock, timeout, [&] { return open == 0; });
  }

  void do_accept(const std::shared_ptr<Core>& self);
};

}  // namespace mil::server
