// Test helper: a local HTTP/1.1 server (Boost.Beast, synchronous, one connection at a time on
// its own thread) on an ephemeral 127.0.0.1 port, answering canned responses by request
// target, so Hub downloads can be tested without a network: {endpoint}/{repo}/resolve/{rev}/{file}.
// Responses can redirect, fail, stall, use chunked encoding, omit Content-Length, or promise
// more bytes than they send and then drop the connection.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <atomic>
#include <cstdint>
#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace mil::test {

class HubTestServer {
 public:
  struct Response {
    int status = 200;
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;
    bool chunked = false;
    bool no_length = false;          // neither Content-Length nor chunked; the close ends the body
    size_t drop_after = SIZE_MAX;    // send Content-Length = body size, then only this many bytes, then close
    std::chrono::milliseconds delay{0};  // wait before answering

    static Response ok(std::string text) {
      Response r;
      r.body = std::move(text);
      return r;
    }
    static Response with_status(int code, std::string text = "") {
      Response r;
      r.status = code;
      r.body = std::move(text);
      return r;
    }
    static Response redirect(int code, std::string location) {
      return with_status(code).header("Location", std::move(location));
    }
    Response header(std::string name, std::string value) && {
      headers.emplace_back(std::move(name), std::move(value));
      return std::move(*this);
    }
    Response as_chunked() && {
      chunked = true;
      return std::move(*this);
    }
    Response without_length() && {
      no_length = true;
      return std::move(*this);
    }
    Response dropped_after(size_t bytes) && {
      drop_after = bytes;
      return std::move(*this);
    }
    Response delayed(std::chrono::milliseconds ms) && {
      delay = ms;
      return std::move(*this);
    }
  };
  struct Request {
    std::string target;
    std::string host;
    std::string authorization;  // "" when absent
  };

  HubTestServer() : acceptor_(ioc_, {boost::asio::ip::make_address("127.0.0.1"), 0}) {
    port_ = acceptor_.local_endpoint().port();
    thread_ = std::thread([this] { run(); });
  }
  HubTestServer(const HubTestServer&) = delete;
  HubTestServer& operator=(const HubTestServer&) = delete;
  ~HubTestServer() {
    stopping_ = true;
    boost::system::error_code ec;
    boost::asio::ip::tcp::socket wake(ioc_);
    wake.connect({boost::asio::ip::make_address("127.0.0.1"), port_}, ec);  // unblocks accept()
    thread_.join();
  }

  uint16_t port() const { return port_; }
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }

  // Answers `target` (path, or path + query) with `response`.
  void on(const std::string& target, Response response) {
    std::lock_guard lock(mu_);
    routes_[target] = std::move(response);
  }
  // The Hub file URL's target for an endpoint without a path prefix.
  static std::string file_target(const std::string& repo, const std::string& rev, const std::string& file) {
    return "/" + repo + "/resolve/" + rev + "/" + file;
  }
  std::vector<Request> requests() const {
    std::lock_guard lock(mu_);
    return requests_;
  }
  size_t request_count() const {
    std::lock_guard lock(mu_);
    return requests_.size();
  }

 private:
  void run() {
    namespace beast = boost::beast;
    namespace http = beast::http;
    for (;;) {
      boost::asio::ip::tcp::socket socket(ioc_);
      boost::system::error_code ec;
      acceptor_.accept(socket, ec);
      if (stopping_) return;
      if (ec) continue;
      beast::flat_buffer buffer;
      http::request<http::string_body> req;
      http::read(socket, buffer, req, ec);
      if (ec) continue;
      Request seen{std::string(req.target()), std::string(req[http::field::host]),
                   std::string(req[http::field::authorization])};
      Response r;
      {
        std::lock_guard lock(mu_);
        requests_.push_back(seen);
        auto it = routes_.find(seen.target);
        if (it == routes_.end()) it = routes_.find(seen.target.substr(0, seen.target.find('?')));
        if (it != routes_.end()) {
          r = it->second;
        } else {
          r.status = 404;
          r.body = "no route";
        }
      }
      if (r.delay.count() > 0) std::this_thread::sleep_for(r.delay);
      if (r.drop_after != SIZE_MAX || r.no_length) {
        std::string raw = "HTTP/1.1 " + std::to_string(r.status) + " OK\r\n";
        if (!r.no_length) raw += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
        raw += "Connection: close\r\n\r\n";
        raw += r.body.substr(0, r.no_length ? r.body.size() : r.drop_after);
        boost::asio::write(socket, boost::asio::buffer(raw), ec);
      } else {
        http::response<http::string_body> res{static_cast<http::status>(r.status), 11};
        for (const auto& [k, v] : r.headers) res.set(k, v);
        res.set(http::field::connection, "close");
        res.body() = r.body;
        if (r.chunked) {
          res.chunked(true);
        } else {
          res.prepare_payload();
        }
        http::write(socket, res, ec);
      }
      socket.shutdown(boost::asio::ip::tcp::socket::shutdown_both, ec);
      socket.close(ec);
    }
  }

  boost::asio::io_context ioc_;
  boost::asio::ip::tcp::acceptor acceptor_;
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
  mutable std::mutex mu_;
  std::map<std::string, Response> routes_;
  std::vector<Request> requests_;
};

}  // namespace mil::test
