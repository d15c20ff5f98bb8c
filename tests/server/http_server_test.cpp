// The HTTP transport against raw-socket and Beast clients, with small handlers and a thread that
// stands in for the engine (no model): framing, keep-alive, limits, streams written from another
// thread, disconnect detection, many concurrent streams on 2 I/O threads, and graceful stop.
#include "server/http_server.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <future>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"

namespace mil::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::string str(beast::string_view s) { return std::string(s.data(), s.size()); }

// A blocking client connection.
class Client {
 public:
  explicit Client(uint16_t port) : socket_(ioc_) {
    socket_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  }
  void send(const std::string& bytes) { asio::write(socket_, asio::buffer(bytes)); }
  http::response<http::string_body> read() {
    http::response_parser<http::string_body> parser;
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    http::read(socket_, buffer_, parser);
    return parser.release();
  }
  http::response<http::string_body> request(const std::string& bytes) {
    send(bytes);
    return read();
  }
  // True when the server closed the connection (EOF or reset) within `timeout`.
  bool closed_by_server(std::chrono::milliseconds timeout) {
    socket_.non_blocking(true);
    const auto deadline = Clock::now() + timeout;
    char byte;
    while (Clock::now() < deadline) {
      error_code ec;
      socket_.read_some(asio::buffer(&byte, 1), ec);
      if (ec == asio::error::would_block) {
        std::this_thread::sleep_for(5ms);
        continue;
      }
      return ec == asio::error::eof || ec == asio::error::connection_reset;
    }
    return false;
  }
  tcp::socket& socket() { return socket_; }
  beast::flat_buffer& buffer() { return buffer_; }

 private:
  asio::io_context ioc_;
  tcp::socket socket_;
  beast::flat_buffer buffer_;
};

std::string get(const std::string& target, const std::string& extra = "") {
  return "GET " + target + " HTTP/1.1\r\nHost: test\r\n" + extra + "\r\n";
}
std::string post(const std::string& target, const std::string& body) {
  return "POST " + target + " HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n" +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

HttpServerOptions test_options() {
  HttpServerOptions o;
  o.port = 0;
  o.io_threads = 2;
  return o;
}

// Answers with what it received.
void echo_handler(const HttpRequest& req, std::shared_ptr<Responder> responder) {
  nlohmann::json j{{"method", req.method}, {"path", req.path},      {"query", req.query},
                   {"body", req.body},     {"remote", req.remote},  {"x-test", req.header("x-test")}};
  HttpResponse r;
  r.body = j.dump();
  r.headers.emplace_back("X-Handled", "yes");
  responder->respond(std::move(r));
}

// Writes `events` SSE events from its own thread, as the engine would.
class FakeEngine {
 public:
  FakeEngine(int events, std::chrono::microseconds interval) : events_(events), interval_(interval) {
    thread_ = std::thread([this] { run(); });
  }
  ~FakeEngine() {
    {
      std::lock_guard lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void add(std::shared_ptr<StreamWriter> writer) {
    {
      std::lock_guard lock(mu_);
      streams_.push_back({std::move(writer), 0});
    }
    cv_.notify_all();
  }
  static std::string event(int i) { return "data:{\"index\":" + std::to_string(i) + "}\n\n"; }
  static std::string full_stream(int events) {
    std::string s;
    for (int i = 1; i <= events; ++i) s += event(i);
    return s;
  }

 private:
  struct Stream {
    std::shared_ptr<StreamWriter> writer;
    int sent;
  };
  void run() {
    std::unique_lock lock(mu_);
    while (!done_) {
      if (streams_.empty()) {
        cv_.wait(lock, [&] { return done_ || !streams_.empty(); });
        continue;
      }
      std::vector<Stream> batch;
      batch.swap(streams_);
      lock.unlock();
      for (Stream& s : batch) {
        s.writer->write(event(++s.sent));
        if (s.sent == events_) s.writer->finish();
      }
      std::this_thread::sleep_for(interval_);
      lock.lock();
      for (Stream& s : batch) {
        if (s.sent < events_) streams_.push_back(std::move(s));
      }
    }
  }

  const int events_;
  const std::chrono::microseconds interval_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Stream> streams_;
  bool done_ = false;
  std::thread thread_;
};

TEST(HttpServer, PlainRequestResponse) {
  HttpServer server(test_options(), echo_handler);
  server.start();
  ASSERT_NE(server.port(), 0);
  Client client(server.port());
  auto res = client.request(
      "POST /generate?x=1&y=2 HTTP/1.1\r\nHost: test\r\nX-Test: hello\r\nContent-Length: 11\r\n\r\n"
      "{\"a\":\"b c\"}");
  EXPECT_EQ(res.result_int(), 200);
  EXPECT_EQ(str(res[http::field::content_type]), "application/json");
  EXPECT_EQ(str(res["X-Handled"]), "yes");
  EXPECT_EQ(str(res[http::field::content_length]), std::to_string(res.body().size()));
  const auto j = nlohmann::json::parse(res.body());
  EXPECT_EQ(j["method"], "POST");
  EXPECT_EQ(j["path"], "/generate");
  EXPECT_EQ(j["query"], "x=1&y=2");
  EXPECT_EQ(j["body"], "{\"a\":\"b c\"}");
  EXPECT_EQ(j["x-test"], "hello");
  EXPECT_EQ(j["remote"].get<std::string>().rfind("127.0.0.1:", 0), 0u);
  EXPECT_TRUE(res.keep_alive());
}

TEST(HttpServer, KeepAliveServesSeveralRequestsOnOneConnection) {
  HttpServer server(test_options(), echo_handler);
  server.start();
  Client client(server.port());
  std::string remote;
  for (int i = 0; i < 5; ++i) {
    auto res = client.request(post("/r" + std::to_string(i), "body" + std::to_string(i)));
    ASSERT_EQ(res.result_int(), 200);
    const auto j = nlohmann::json::parse(res.body());
    EXPECT_EQ(j["path"], "/r" + std::to_string(i));
    EXPECT_EQ(j["body"], "body" + std::to_string(i));
    if (i == 0) remote = j["remote"];
    EXPECT_EQ(j["remote"], remote);  // the same connection
  }
  // Pipelined: two requests in one write are answered in order.
  client.send(get("/first") + get("/second"));
  EXPECT_EQ(nlohmann::json::parse(client.read().body())["path"], "/first");
  EXPECT_EQ(nlohmann::json::parse(client.read().body())["path"], "/second");
  // Connection: close is honoured.
  auto res = client.request(get("/last", "Connection: close\r\n"));
  EXPECT_FALSE(res.keep_alive());
  EXPECT_TRUE(client.closed_by_server(2000ms));
}

TEST(HttpServer, AnswersFromAnotherThreadLater) {
  std::vector<std::thread> workers;
  std::mutex mu;
  HttpServer server(test_options(), [&](const HttpRequest&, std::shared_ptr<Responder> r) {
    std::lock_guard lock(mu);
    workers.emplace_back([r] {
      std::this_thread::sleep_for(20ms);
      r->respond({200, "text/plain", {}, "late"});
    });
  });
  server.start();
  Client client(server.port());
  EXPECT_EQ(client.request(get("/a")).body(), "late");
  EXPECT_EQ(client.request(get("/b")).body(), "late");
  for (auto& t : workers) t.join();
}

TEST(HttpServer, OversizedBodyGets413) {
  auto options = test_options();
  options.payload_limit = 1000;
  std::atomic<int> handled{0};
  HttpServer server(options, [&](const HttpRequest& req, std::shared_ptr<Responder> r) {
    ++handled;
    echo_handler(req, std::move(r));
  });
  server.start();
  {
    Client client(server.port());
    auto res = client.request(post("/generate", std::string(5000, 'x')));
    EXPECT_EQ(res.result_int(), 413);
    const auto j = nlohmann::json::parse(res.body());
    EXPECT_EQ(j["error_type"], "payload_too_large");
    EXPECT_FALSE(j["error"].get<std::string>().empty());
    EXPECT_FALSE(res.keep_alive());
  }
  {
    // Chunked bodies are counted as they arrive.
    Client client(server.port());
    std::string chunk(600, 'y');
    auto res = client.request(
        "POST /generate HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n" + chunk +
        "\r\n258\r\n" + chunk + "\r\n0\r\n\r\n");
    EXPECT_EQ(res.result_int(), 413);
  }
  {
    Client client(server.port());  // at the limit is fine
    EXPECT_EQ(client.request(post("/generate", std::string(1000, 'x'))).result_int(), 200);
  }
  EXPECT_EQ(handled.load(), 1);
}

TEST(HttpServer, MalformedRequestGets400AndClose) {
  HttpServer server(test_options(), echo_handler);
  server.start();
  for (const std::string& garbage :
       {std::string("GARBAGE\r\n\r\n"), std::string("GET / HTTP/9.9x\r\n\r\n"),
        std::string("POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n"),
        std::string("GET / HTTP/1.1\r\nBad Header\r\n\r\n")}) {
    Client client(server.port());
    auto res = client.request(garbage);
    EXPECT_EQ(res.result_int(), 400) << garbage;
    EXPECT_EQ(nlohmann::json::parse(res.body())["error_type"], "bad_request");
    EXPECT_TRUE(client.closed_by_server(2000ms)) << garbage;
  }
}

TEST(HttpServer, OversizedHeadersGet431) {
  auto options = test_options();
  options.header_limit = 1024;
  HttpServer server(options, echo_handler);
  server.start();
  Client client(server.port());
  auto res = client.request(get("/", "X-Big: " + std::string(4000, 'h') + "\r\n"));
  EXPECT_EQ(res.result_int(), 431);
}

TEST(HttpServer, HandlerErrorsGive500) {
  HttpServer server(test_options(), [](const HttpRequest& req, std::shared_ptr<Responder> r) {
    if (req.path == "/throw") throw std::runtime_error("boom \xff");
    if (req.path == "/drop") return;  // never answers: the transport does
    echo_handler(req, std::move(r));
  });
  server.start();
  Client client(server.port());
  auto res = client.request(get("/throw"));
  EXPECT_EQ(res.result_int(), 500);
  EXPECT_EQ(nlohmann::json::parse(res.body())["error_type"], "internal");
  res = client.request(get("/drop"));
  EXPECT_EQ(res.result_int(), 500);
  EXPECT_EQ(client.request(get("/ok")).result_int(), 200);  // the connection is still usable
}

TEST(HttpServer, ExpectContinue) {
  HttpServer server(test_options(), echo_handler);
  server.start();
  Client client(server.port());
  client.send("POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
  std::string interim(25, '\0');
  asio::read(client.socket(), asio::buffer(interim));
  EXPECT_EQ(interim, "HTTP/1.1 100 Continue\r\n\r\n");
  client.send("abcd");
  EXPECT_EQ(nlohmann::json::parse(client.read().body())["body"], "abcd");
}

TEST(HttpServer, StreamsChunkedFromAnotherThread) {
  FakeEngine engine(10, 1ms);
  HttpServer server(test_options(), [&](const HttpRequest& req, std::shared_ptr<Responder> r) {
    if (req.path != "/stream") return echo_handler(req, std::move(r));
    engine.add(r->stream({{"X-Request-Id", "7"}}));
  });
  server.start();
  Client client(server.port());
  for (int round = 0; round < 2; ++round) {
    auto res = client.request(get("/stream"));
    EXPECT_EQ(res.result_int(), 200);
    EXPECT_EQ(str(res[http::field::content_type]), "text/event-stream");
    EXPECT_EQ(str(res[http::field::cache_control]), "no-cache");
    EXPECT_EQ(str(res["X-Accel-Buffering"]), "no");
    EXPECT_EQ(str(res["X-Request-Id"]), "7");
    EXPECT_EQ(str(res[http::field::transfer_encoding]), "chunked");
    EXPECT_TRUE(res[http::field::content_length].empty());
    EXPECT_EQ(res.body(), FakeEngine::full_stream(10));
    EXPECT_TRUE(res.keep_alive());
  }
  // The connection is reused after the stream ended.
  EXPECT_EQ(nlohmann::json::parse(client.request(get("/after")).body())["path"], "/after");
}

TEST(HttpServer, StreamToHttp10ClientIsRawAndCloses) {
  FakeEngine engine(3, 1ms);
  HttpServer server(test_options(), [&](const HttpRequest&, std::shared_ptr<Responder> r) {
    engine.add(r->stream());
  });
  server.start();
  Client client(server.port());
  client.send("GET /stream HTTP/1.0\r\n\r\n");
  std::string all;
  error_code ec;
  asio::read(client.socket(), asio::dynamic_buffer(all), ec);
  EXPECT_EQ(ec, asio::error::eof);
  EXPECT_NE(all.find("\r\n\r\n" + FakeEngine::full_stream(3)), std::string::npos) << all;
  EXPECT_EQ(all.find("chunked"), std::string::npos);
}

TEST(HttpServer, DisconnectDuringStreamFiresCallbackAndDropsWrites) {
  std::promise<std::shared_ptr<StreamWriter>> opened;
  std::promise<void> disconnected;
  std::atomic<int> callbacks{0};
  HttpServer server(test_options(), [&](const HttpRequest&, std::shared_ptr<Responder> r) {
    auto writer = r->stream();
    writer->on_disconnect([&] {
      if (++callbacks == 1) disconnected.set_value();
    });
    opened.set_value(writer);
  });
  server.start();
  auto client = std::make_unique<Client>(server.port());
  client->send(get("/stream"));
  auto writer = opened.get_future().get();
  writer->write("data:1\n\n");
  // Read the headers and the first event, then go away while nothing is being written (as a
  // client whose request is still queued would).
  http::response_parser<http::string_body> parser;
  http::read_header(client->socket(), client->buffer(), parser);
  EXPECT_EQ(parser.get().result_int(), 200);
  EXPECT_FALSE(writer->closed());
  const auto t0 = Clock::now();
  client.reset();
  ASSERT_EQ(disconnected.get_future().wait_for(2s), std::future_status::ready);
  EXPECT_LT(Clock::now() - t0, 1s);
  EXPECT_TRUE(writer->closed());
  std::thread engine([&] {
    for (int i = 0; i < 100; ++i) writer->write("data:x\n\n");
    writer->finish();
  });
  engine.join();
  bool late = false;
  writer->on_disconnect([&] { late = true; });
  EXPECT_FALSE(late);  // never after finish()
  EXPECT_EQ(callbacks.load(), 1);
  EXPECT_EQ(server.open_connections(), 0);
}

TEST(HttpServer, OnDisconnectSetAfterDisconnectRunsAtOnce) {
  std::promise<std::shared_ptr<StreamWriter>> opened;
  HttpServer server(test_options(), [&](const HttpRequest&, std::shared_ptr<Responder> r) {
    opened.set_value(r->stream());
  });
  server.start();
  auto client = std::make_unique<Client>(server.port());
  client->send(get("/stream"));
  auto writer = opened.get_future().get();
  client.reset();
  const auto deadline = Clock::now() + 2s;
  while (!writer->closed() && Clock::now() < deadline) std::this_thread::sleep_for(5ms);
  ASSERT_TRUE(writer->closed());
  bool called = false;
  writer->on_disconnect([&] { called = true; });
  EXPECT_TRUE(called);
}

// A handler that keeps the Responder (as a route waiting for the engine does) and counts
// disconnects of the requests to /hold; other paths are echoed.
struct HoldingHandler {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::shared_ptr<Responder>> held;
  std::atomic<int> disconnects{0};

  Handler handler() {
    return [this](const HttpRequest& req, std::shared_ptr<Responder> r) {
      if (req.path != "/hold") return echo_handler(req, std::move(r));
      r->on_disconnect([this] {
        ++disconnects;
        cv.notify_all();
      });
      std::lock_guard lock(mu);
      held.push_back(std::move(r));
      cv.notify_all();
    };
  }
  std::shared_ptr<Responder> wait_held(size_t n) {
    std::unique_lock lock(mu);
    if (!cv.wait_for(lock, 2s, [&] { return held.size() >= n; })) return nullptr;
    return held[n - 1];
  }
  bool wait_disconnects(int n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, timeout, [&] { return disconnects.load() >= n; });
  }
};

TEST(HttpServer, DisconnectWhileHandlingFiresResponderCallback) {
  HoldingHandler h;
  HttpServer server(test_options(), h.handler());
  server.start();
  for (const bool reset : {false, true}) {
    const int before = h.disconnects.load();
    const size_t held = reset ? 2 : 1;
    auto client = std::make_unique<Client>(server.port());
    client->send(post("/hold", R"({"inputs":"x"})"));
    auto responder = h.wait_held(held);
    ASSERT_TRUE(responder);
    std::this_thread::sleep_for(50ms);
    EXPECT_EQ(h.disconnects.load(), before);  // still connected
    const auto t0 = Clock::now();
    if (reset) client->socket().set_option(asio::socket_base::linger(true, 0));  // RST
    client.reset();
    ASSERT_TRUE(h.wait_disconnects(before + 1, 2000ms)) << "reset " << reset;
    EXPECT_LT(Clock::now() - t0, 1s);
    // A late answer is dropped; a callback set now runs at once; nothing fires twice.
    bool late = false;
    responder->on_disconnect([&] { late = true; });
    EXPECT_TRUE(late);
    responder->respond({200, "text/plain", {}, "too late"});
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(h.disconnects.load(), before + 1);
  }
  const auto deadline = Clock::now() + 2s;
  while (server.open_connections() != 0 && Clock::now() < deadline) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(server.open_connections(), 0);
}

TEST(HttpServer, NoDisconnectCallbackAfterRespond) {
  HoldingHandler h;
  HttpServer server(test_options(), h.handler());
  server.start();
  auto client = std::make_unique<Client>(server.port());
  client->send(get("/hold"));
  auto responder = h.wait_held(1);
  ASSERT_TRUE(responder);
  responder->respond({200, "text/plain", {}, "answer"});
  EXPECT_EQ(client->read().body(), "answer");
  client.reset();
  std::this_thread::sleep_for(100ms);
  bool late = false;
  responder->on_disconnect([&] { late = true; });
  EXPECT_FALSE(late);
  EXPECT_EQ(h.disconnects.load(), 0);
}

TEST(HttpServer, PipelinedRequestWhileHandlingIsNotADisconnect) {
  HoldingHandler h;
  HttpServer server(test_options(), h.handler());
  server.start();
  Client client(server.port());
  client.send(post("/hold", "first body"));
  auto responder = h.wait_held(1);
  ASSERT_TRUE(responder);
  // The next requests arrive (in pieces) while the first is being handled.
  const std::string next = post("/second", "second body") + get("/third");
  client.send(next.substr(0, 20));
  std::this_thread::sleep_for(30ms);
  client.send(next.substr(20));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(h.disconnects.load(), 0);
  responder->respond({200, "text/plain", {}, "first answer"});
  EXPECT_EQ(client.read().body(), "first answer");
  auto second = nlohmann::json::parse(client.read().body());
  EXPECT_EQ(second["path"], "/second");
  EXPECT_EQ(second["body"], "second body");
  EXPECT_EQ(nlohmann::json::parse(client.read().body())["path"], "/third");
  // The connection still works, and a later held request still sees its disconnect.
  EXPECT_EQ(nlohmann::json::parse(client.request(get("/fourth")).body())["path"], "/fourth");
  EXPECT_EQ(h.disconnects.load(), 0);
  client.send(get("/hold"));
  ASSERT_TRUE(h.wait_held(2));
  client.socket().close();
  EXPECT_TRUE(h.wait_disconnects(1, 2000ms));
}

TEST(HttpServer, ResponderCallbackFiresForADisconnectDuringTheStream) {
  // One registration on the Responder covers the whole exchange, stream included.
  std::promise<std::shared_ptr<StreamWriter>> opened;
  std::promise<void> disconnected;
  std::atomic<int> callbacks{0};
  HttpServer server(test_options(), [&](const HttpRequest&, std::shared_ptr<Responder> r) {
    r->on_disconnect([&] {
      if (++callbacks == 1) disconnected.set_value();
    });
    opened.set_value(r->stream());
  });
  server.start();
  auto client = std::make_unique<Client>(server.port());
  client->send(get("/stream"));
  auto writer = opened.get_future().get();
  writer->write("data:1\n\n");
  http::response_parser<http::string_body> parser;
  http::read_header(client->socket(), client->buffer(), parser);
  EXPECT_EQ(parser.get().result_int(), 200);
  client.reset();
  ASSERT_EQ(disconnected.get_future().wait_for(2s), std::future_status::ready);
  EXPECT_TRUE(writer->closed());
  writer->finish();
  EXPECT_EQ(callbacks.load(), 1);
}

TEST(HttpServer, StopFiresDisconnectForRequestsStillHandled) {
  auto options = test_options();
  options.stop_timeout_s = 0.2;
  HoldingHandler h;
  HttpServer server(options, h.handler());
  server.start();
  Client client(server.port());
  client.send(get("/hold"));
  auto responder = h.wait_held(1);
  ASSERT_TRUE(responder);
  server.stop();
  EXPECT_EQ(h.disconnects.load(), 1);
  responder->respond({200, "text/plain", {}, "late"});  // dropped, no crash
}

TEST(HttpServer, ThousandConcurrentStreamsOnTwoIoThreads) {
  constexpr int kClients = 1000;
  constexpr int kEvents = 20;
  // Both ends of every connection live in this process: ~2 descriptors per client.
  rlimit files{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &files), 0);
  constexpr rlim_t kNeeded = 2 * kClients + 256;
  if (files.rlim_cur < kNeeded && files.rlim_max >= kNeeded) {
    files.rlim_cur = kNeeded;
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &files), 0);
  }
  if (files.rlim_cur < kNeeded) GTEST_SKIP() << "needs " << kNeeded << " open files (ulimit -n)";
  FakeEngine engine(kEvents, 2ms);
  auto options = test_options();
  options.io_threads = 2;
  std::atomic<int> peak{0};
  HttpServer* server_ptr = nullptr;
  HttpServer server(options, [&](const HttpRequest&, std::shared_ptr<Responder> r) {
    const int open = static_cast<int>(server_ptr->open_connections());
    int seen = peak.load();
    while (open > seen && !peak.compare_exchange_weak(seen, open)) {
    }
    engine.add(r->stream());
  });
  server_ptr = &server;
  server.start();

  struct AsyncClient {
    explicit AsyncClient(asio::io_context& ioc) : socket(ioc) {}
    tcp::socket socket;
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    std::string request = get("/generate_stream");
    std::string body;
    std::string error;
  };
  asio::io_context ioc;
  std::vector<std::unique_ptr<AsyncClient>> clients;
  const tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), server.port());
  const auto t0 = Clock::now();
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<AsyncClient>(ioc));
    AsyncClient* c = clients.back().get();
    c->socket.async_connect(endpoint, [c](error_code ec) {
      if (ec) {
        c->error = "connect: " + ec.message();
        return;
      }
      asio::async_write(c->socket, asio::buffer(c->request), [c](error_code wec, size_t) {
        if (wec) {
          c->error = "write: " + wec.message();
          return;
        }
        http::async_read(c->socket, c->buffer, c->parser, [c](error_code rec, size_t) {
          if (rec) {
            c->error = "read: " + rec.message();
            return;
          }
          c->body = c->parser.get().body();
        });
      });
    });
  }
  ioc.run();
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  const std::string expected = FakeEngine::full_stream(kEvents);
  int ok = 0;
  for (const auto& c : clients) {
    EXPECT_EQ(c->error, "");
    if (c->body == expected) ++ok;
  }
  EXPECT_EQ(ok, kClients);
  EXPECT_GE(peak.load(), kClients / 2) << "streams did not overlap";
  EXPECT_LT(seconds, 20.0);
  std::printf("%d streams of %d events on 2 I/O threads in %.2f s (peak %d open)\n", kClients,
              kEvents, seconds, peak.load());
}

TEST(HttpServer, StopDrainsStreamsInFlight) {
  FakeEngine engine(20, 10ms);  // ~200 ms per stream
  std::promise<void> streaming;
  std::atomic<bool> first{true};
  HttpServer server(test_options(), [&](const HttpRequest& req, std::shared_ptr<Responder> r) {
    if (req.path != "/stream") return echo_handler(req, std::move(r));
    engine.add(r->stream());
    if (first.exchange(false)) streaming.set_value();
  });
  server.start();
  const uint16_t port = server.port();
  Client idle(port);
  EXPECT_EQ(idle.request(get("/x")).result_int(), 200);
  Client client(port);
  client.send(get("/stream"));
  streaming.get_future().wait();
  const auto t0 = Clock::now();
  std::thread stopper([&] { server.stop(); });
  auto res = client.read();  // the stream in flight completes
  EXPECT_EQ(res.body(), FakeEngine::full_stream(20));
  EXPECT_TRUE(client.closed_by_server(2000ms));  // closed after it, since the server is stopping
  client.socket().close();
  EXPECT_TRUE(idle.closed_by_server(2000ms));
  stopper.join();
  EXPECT_LT(Clock::now() - t0, 5s);
  EXPECT_EQ(server.open_connections(), 0);
  // Nothing listens any more.
  asio::io_context ioc;
  tcp::socket s(ioc);
  error_code ec;
  s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), ec);
  EXPECT_TRUE(ec);
}

TEST(HttpServer, StopClosesStreamsThatOutliveTheTimeout) {
  auto options = test_options();
  options.stop_timeout_s = 0.2;
  std::promise<std::shared_ptr<StreamWriter>> opened;
  std::promise<void> disconnected;
  HttpServer server(options, [&](const HttpRequest&, std::shared_ptr<Responder> r) {
    auto writer = r->stream();
    writer->on_disconnect([&] { disconnected.set_value(); });
    opened.set_value(writer);
  });
  server.start();
  Client client(server.port());
  client.send(get("/stream"));
  auto writer = opened.get_future().get();
  const auto t0 = Clock::now();
  server.stop();
  EXPECT_LT(Clock::now() - t0, 3s);
  EXPECT_EQ(disconnected.get_future().wait_for(0s), std::future_status::ready);
  writer->write("data:late\n\n");  // dropped, no crash
  writer->finish();
}

TEST(HttpServer, IdleKeepAliveConnectionTimesOut) {
  auto options = test_options();
  options.keep_alive_timeout_s = 0.2;
  HttpServer server(options, echo_handler);
  server.start();
  Client client(server.port());
  EXPECT_EQ(client.request(get("/")).result_int(), 200);
  EXPECT_TRUE(client.closed_by_server(2000ms));
}

TEST(HttpServer, ConnectionsOverTheLimitGet503) {
  auto options = test_options();
  options.max_connections = 2;
  HttpServer server(options, echo_handler);
  server.start();
  Client a(server.port()), b(server.port());
  EXPECT_EQ(a.request(get("/")).result_int(), 200);
  EXPECT_EQ(b.request(get("/")).result_int(), 200);
  Client c(server.port());
  auto res = c.read();
  EXPECT_EQ(res.result_int(), 503);
  EXPECT_EQ(nlohmann::json::parse(res.body())["error_type"], "overloaded");
}

TEST(HttpServer, BindFailureIsAClearError) {
  HttpServer first(test_options(), echo_handler);
  first.start();
  auto options = test_options();
  options.port = first.port();
  HttpServer second(options, echo_handler);
  EXPECT_THROW(second.start(), Error);
}

}  // namespace
}  // namespace mil::server
