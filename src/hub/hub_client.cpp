// The network and cache half of hub_client.h: one Beast HTTP/1.1 exchange per hop (a fresh
// connection each, "Connection: close"), redirects, and the temp-file-then-rename cache write.
// Each blocking step runs an asynchronous Asio operation on a private io_context with
// run_for(timeout), so resolve, connect, the TLS handshake and every read have a deadline.
#include "hub/hub_client.h"

#include <fcntl.h>
#include <openssl/ssl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

namespace mil::hub {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using Kind = HubError::Kind;

constexpr size_t kChunkBytes = size_t{1} << 16;
constexpr uint32_t kMaxHeaderBytes = 32 * 1024;
constexpr size_t kMaxTokenChars = 4096;

std::string_view sv(beast::string_view s) { return {s.data(), s.size()}; }

// Untrusted text (a header value) made safe and short for an error message.
std::string printable(std::string_view text, size_t max_chars = 200) {
  std::string out;
  for (char ch : text.substr(0, max_chars)) {
    const auto c = static_cast<unsigned char>(ch);
    out += (c >= 0x20 && c < 0x7f) ? ch : '?';
  }
  if (text.size() > max_chars) out += "...";
  return out;
}

std::string lower_trimmed(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

bool is_ip_literal(const std::string& host) {
  beast::error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

// A file being downloaded, next to its final name; removed unless committed.
class TempFile {
 public:
  TempFile(const std::filesystem::path& final_path, const std::string& url) : final_(final_path), url_(url) {
    std::string pattern = (final_.parent_path() / ("." + final_.filename().string() + ".part-XXXXXX")).string();
    fd_ = ::mkstemp(pattern.data());
    if (fd_ < 0) io_error("cannot create a temporary file in " + final_.parent_path().string());
    path_ = pattern;
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
  }

  void write(const char* data, size_t n) {
    while (n > 0) {
      const ssize_t w = ::write(fd_, data, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) io_error("cannot write " + path_);
      data += w;
      n -= static_cast<size_t>(w);
    }
  }

  // fsync, rename to the final name, fsync the folder: the final name only ever holds a whole file.
  void commit() {
    if (::fsync(fd_) != 0) io_error("cannot fsync " + path_);
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) io_error("cannot close " + path_);
    ::chmod(path_.c_str(), 0644);  // mkstemp made it 0600; the cache is shared like any download
    if (::rename(path_.c_str(), final_.c_str()) != 0) io_error("cannot rename " + path_ + " to " + final_.string());
    committed_ = true;
    const int dir = ::open(final_.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
      ::fsync(dir);
      ::close(dir);
    }
  }

 private:
  [[noreturn]] void io_error(const std::string& what) const {
    throw HubError(Kind::Io, 0, "downloading " + url_ + ": " + what + ": " + std::strerror(errno));
  }

  std::filesystem::path final_;
  std::string url_;
  std::string path_;
  int fd_ = -1;
  bool committed_ = false;
};

// What one hop answered: a redirect to follow, or the file (already streamed to disk).
struct HopResult {
  std::optional<std::string> location;
};

// One request/response over a fresh connection to `url`.
class Exchange {
 public:
  Exchange(const HubOptions& options, ssl::context& tls, Url url, std::string described)
      : options_(options), tls_(tls), url_(std::move(url)), described_(std::move(described)) {}

  HopResult run(const std::string& token, const std::filesystem::path& final_path) {
    tcp::resolver resolver(ioc_);
    tcp::resolver::results_type endpoints;
    step("resolve", options_.connect_timeout, [&](auto done) {
      resolver.async_resolve(url_.host, std::to_string(url_.port),
                             [&endpoints, done](beast::error_code ec, tcp::resolver::results_type r) {
                               endpoints = std::move(r);
                               done(ec);
                             });
    }, [&] { resolver.cancel(); });

    if (url_.scheme == "https") {
      ssl::stream<tcp::socket> stream(ioc_, tls_);
      connect(stream.next_layer(), endpoints);
      if (!is_ip_literal(url_.host) && SSL_set_tlsext_host_name(stream.native_handle(), url_.host.c_str()) != 1) {
        fail_network("cannot set the TLS server name");
      }
      stream.set_verify_mode(ssl::verify_peer);
      stream.set_verify_callback(ssl::host_name_verification(url_.host));
      step("TLS handshake", options_.connect_timeout, [&](auto done) {
        stream.async_handshake(ssl::stream_base::client, [done](beast::error_code ec) { done(ec); });
      }, [&] { close(stream.next_layer()); });
      HopResult result = exchange(stream, stream.next_layer(), token, final_path);
      close(stream.next_layer());  // no TLS close_notify: the body's length already told us it is whole
      return result;
    }
    tcp::socket socket(ioc_);
    connect(socket, endpoints);
    HopResult result = exchange(socket, socket, token, final_path);
    close(socket);
    return result;
  }

 private:
  // Runs the operation `start(done)` begins until it calls done(ec), for at most `timeout`;
  // on timeout, `cancel` aborts it. Returns the operation's error code.
  template <class Start, class Cancel>
  beast::error_code try_step(const char* what, std::chrono::milliseconds timeout, Start&& start, Cancel&& cancel) {
    beast::error_code result;
    bool finished = false;
    start([&result, &finished](beast::error_code ec) {
      result = ec;
      finished = true;
    });
    ioc_.restart();
    ioc_.run_for(timeout);
    if (!finished) {
      cancel();
      ioc_.restart();
      ioc_.run();  // let the aborted operation's handler run before its state goes away
      throw HubError(Kind::Network, 0,
                     fmt::format("{}: {} timed out after {} ms", described_, what, timeout.count()));
    }
    return result;
  }

  template <class Start, class Cancel>
  void step(const char* what, std::chrono::milliseconds timeout, Start&& start, Cancel&& cancel) {
    const beast::error_code ec = try_step(what, timeout, std::forward<Start>(start), std::forward<Cancel>(cancel));
    if (ec) fail_network(std::string(what) + " failed: " + ec.message());
  }

  [[noreturn]] void fail_network(const std::string& what) const {
    throw HubError(Kind::Network, 0, described_ + ": " + what);
  }
  [[noreturn]] void fail_response(int status, const std::string& what) const {
    throw HubError(Kind::BadResponse, status, described_ + ": " + what);
  }

  static void close(tcp::socket& socket) {
    beast::error_code ignored;
    socket.shutdown(tcp::socket::shutdown_both, ignored);
    socket.close(ignored);
  }

  void connect(tcp::socket& socket, const tcp::resolver::results_type& endpoints) {
    step("connect", options_.connect_timeout, [&](auto done) {
      asio::async_connect(socket, endpoints, [done](beast::error_code ec, const tcp::endpoint&) { done(ec); });
    }, [&] { close(socket); });
  }

  std::string host_header() const {
    std::string h = url_.host.find(':') != std::string::npos ? "[" + url_.host + "]" : url_.host;
    if (url_.port != (url_.scheme == "https" ? 443 : 80)) h += ":" + std::to_string(url_.port);
    return h;
  }

  template <class Stream>
  HopResult exchange(Stream& stream, tcp::socket& socket, const std::string& token,
                     const std::filesystem::path& final_path) {
    http::request<http::empty_body> req{http::verb::get, url_.target, 11};
    req.set(http::field::host, host_header());
    req.set(http::field::user_agent, "mil-hub/1");
    req.set(http::field::accept, "*/*");
    req.set(http::field::accept_encoding, "identity");
    req.set(http::field::connection, "close");
    if (!token.empty()) req.set(http::field::authorization, "Bearer " + token);
    step("send request", options_.io_timeout, [&](auto done) {
      http::async_write(stream, req, [done](beast::error_code ec, size_t) { done(ec); });
    }, [&] { close(socket); });

    beast::flat_buffer buffer(kChunkBytes + kMaxHeaderBytes);
    http::response_parser<http::buffer_body> parser;
    parser.header_limit(kMaxHeaderBytes);
    // Limits the body only once the status is known: a redirect or error page must not fail
    // on a length the file limit is about (the 200 case checks Content-Length below).
    parser.body_limit(std::numeric_limits<uint64_t>::max());
    step("read response header", options_.io_timeout, [&](auto done) {
      http::async_read_header(stream, buffer, parser, [done](beast::error_code ec, size_t) { done(ec); });
    }, [&] { close(socket); });

    const auto& head = parser.get();
    const int status = static_cast<int>(head.result_int());
    if (status == 301 || status == 302 || status == 303 || status == 307 || status == 308) {
      const auto it = head.find(http::field::location);
      if (it == head.end()) fail_response(status, fmt::format("HTTP {} redirect without a Location", status));
      return HopResult{std::string(sv(it->value()))};
    }
    if (status != 200) {
      std::string detail;
      if (const auto it = head.find("X-Error-Message"); it != head.end()) detail = ": " + printable(sv(it->value()));
      const Kind kind = status == 401 || status == 403 ? Kind::AccessDenied
                        : status == 404                ? Kind::NotFound
                                                       : Kind::HttpStatus;
      const char* what = kind == Kind::AccessDenied ? " (access denied)" : kind == Kind::NotFound ? " (not found)" : "";
      throw HubError(kind, status, fmt::format("{}: HTTP {}{}{}", described_, status, what, detail));
    }

    if (const auto it = head.find(http::field::content_encoding); it != head.end()) {
      const std::string enc = lower_trimmed(sv(it->value()));
      if (!enc.empty() && enc != "identity") fail_response(status, "unexpected Content-Encoding '" + printable(enc, 40) + "'");
    }
    if (const auto it = head.find(http::field::transfer_encoding); it != head.end()) {
      if (lower_trimmed(sv(it->value())) != "chunked") {
        fail_response(status, "unsupported Transfer-Encoding '" + printable(sv(it->value()), 40) + "'");
      }
    }
    std::optional<uint64_t> length;
    if (const auto cl = parser.content_length()) length = *cl;
    if (!length && !parser.chunked()) {
      // A body that ends when the connection closes cannot be told apart from a dropped one.
      fail_response(status, "the response has neither Content-Length nor chunked encoding");
    }
    if (length && *length > options_.max_file_bytes) {
      fail_response(status, fmt::format("the file is {} bytes, more than the {} allowed", *length,
                                        options_.max_file_bytes));
    }

    parser.body_limit(options_.max_file_bytes);  // bounds chunked bodies as they arrive
    TempFile file(final_path, described_);
    std::vector<char> chunk(kChunkBytes);
    uint64_t received = 0;
    while (!parser.is_done()) {
      parser.get().body().data = chunk.data();
      parser.get().body().size = chunk.size();
      beast::error_code ec = try_step("read body", options_.io_timeout, [&](auto done) {
        http::async_read(stream, buffer, parser, [done](beast::error_code e, size_t) { done(e); });
      }, [&] { close(socket); });
      if (ec == http::error::need_buffer) ec = {};
      const size_t n = chunk.size() - parser.get().body().size;
      file.write(chunk.data(), n);
      received += n;
      if (ec == http::error::body_limit) {
        fail_response(status, fmt::format("the file is more than the {} bytes allowed", options_.max_file_bytes));
      }
      if (ec) {
        const std::string expected = length ? fmt::format(" of {}", *length) : std::string();
        fail_network(fmt::format("connection lost after {}{} bytes of the file: {}", received, expected, ec.message()));
      }
    }
    if (length && received != *length) {
      fail_network(fmt::format("received {} bytes, but Content-Length said {}", received, *length));
    }
    file.commit();
    return HopResult{};
  }

  const HubOptions& options_;
  ssl::context& tls_;
  Url url_;
  std::string described_;  // "GET <url>" for messages
  asio::io_context ioc_{1};
};

}  // namespace

struct HubClient::Tls {
  ssl::context context{ssl::context::tls_client};
};

HubClient::HubClient(HubOptions options) : options_(std::move(options)), tls_(std::make_shared<Tls>()) {
  endpoint_ = parse_url(options_.endpoint);
  if (endpoint_.target.find_first_of("?") != std::string::npos) {
    throw HubError(Kind::InvalidArgument, 0, "the Hub endpoint '" + endpoint_.str(false) + "' must not have a query");
  }
  while (endpoint_.target.size() > 1 && endpoint_.target.back() == '/') endpoint_.target.pop_back();
  if (endpoint_.target == "/") endpoint_.target.clear();
  if (options_.cache_dir.empty()) throw HubError(Kind::InvalidArgument, 0, "the Hub cache folder is not set");
  if (options_.max_redirects < 0 || options_.max_file_bytes == 0) {
    throw HubError(Kind::InvalidArgument, 0, "Hub client: invalid redirect or size limit");
  }

  beast::error_code ec;
  tls_->context.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                            ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  tls_->context.set_default_verify_paths(ec);
  if (ec) throw HubError(Kind::InvalidArgument, 0, "cannot load the system CA store: " + ec.message());
  if (!options_.ca_file.empty()) {
    tls_->context.load_verify_file(options_.ca_file, ec);
    if (ec) {
      throw HubError(Kind::InvalidArgument, 0, "cannot load CA file '" + options_.ca_file + "': " + ec.message());
    }
  }
  tls_->context.set_verify_mode(ssl::verify_peer);
}

HubClient::~HubClient() = default;

std::string HubClient::revision_dir(std::string_view repo_id, std::string_view revision) const {
  if (!valid_repo_id(repo_id)) {
    throw HubError(Kind::InvalidArgument, 0,
                   "invalid Hub repo id '" + printable(repo_id, 200) +
                       "': expected owner/name of A-Z a-z 0-9 . _ - (no '--' or '..', at most 96 each)");
  }
  if (!valid_revision(revision)) {
    throw HubError(Kind::InvalidArgument, 0,
                   "invalid Hub revision '" + printable(revision, 200) +
                       "': use A-Z a-z 0-9 . _ - and '/' between non-empty parts (no '.' or '..' parts)");
  }
  std::string repo_dir(repo_id);
  repo_dir.replace(repo_dir.find('/'), 1, "--");
  std::string rev(revision);
  for (size_t at = rev.find('/'); at != std::string::npos; at = rev.find('/', at)) rev.replace(at, 1, "%2F");
  return (std::filesystem::path(options_.cache_dir) / repo_dir / rev).string();
}

std::string HubClient::cache_path(std::string_view repo_id, std::string_view revision,
                                  std::string_view filename) const {
  const std::string dir = revision_dir(repo_id, revision);
  if (!valid_filename(filename)) {
    throw HubError(Kind::InvalidArgument, 0,
                   "invalid Hub filename '" + printable(filename, 200) +
                       "': use A-Z a-z 0-9 . _ - and '/' between non-empty parts (no '.' or '..' parts)");
  }
  return (std::filesystem::path(dir) / std::string(filename)).string();
}

Url HubClient::file_url(std::string_view repo_id, std::string_view revision, std::string_view filename) const {
  cache_path(repo_id, revision, filename);  // validates all three
  std::string rev(revision);
  for (size_t at = rev.find('/'); at != std::string::npos; at = rev.find('/', at)) rev.replace(at, 1, "%2F");
  Url url = endpoint_;
  url.target = endpoint_.target + "/" + std::string(repo_id) + "/resolve/" + rev + "/" + std::string(filename);
  return url;
}

std::string HubClient::download(std::string_view repo_id, std::string_view revision,
                                std::string_view filename, const std::string& token) const {
  const std::filesystem::path final_path = cache_path(repo_id, revision, filename);
  std::error_code fs_ec;
  if (std::filesystem::is_regular_file(final_path, fs_ec)) return final_path.string();

  if (token.size() > kMaxTokenChars ||
      !std::all_of(token.begin(), token.end(), [](char c) { return c > 0x20 && c < 0x7f; })) {
    throw HubError(Kind::InvalidArgument, 0,
                   "the Hub token is longer than 4096 characters or holds characters an HTTP header cannot carry");
  }
  std::filesystem::create_directories(final_path.parent_path(), fs_ec);
  if (fs_ec) {
    throw HubError(Kind::Io, 0, "cannot create the Hub cache folder " + final_path.parent_path().string() +
                                    ": " + fs_ec.message());
  }

  const Url first = file_url(repo_id, revision, filename);
  Url url = first;
  bool send_token = !token.empty();
  for (int hop = 0;; ++hop) {
    std::string described = "GET " + first.str(false);
    if (hop > 0) described += " (redirected to " + url.str(false) + ")";
    Exchange exchange(options_, tls_->context, url, described);
    const HopResult result = exchange.run(send_token ? token : std::string(), final_path);
    if (!result.location) return final_path.string();
    if (hop >= options_.max_redirects) {
      throw HubError(Kind::BadResponse, 0, fmt::format("{}: more than {} redirects", described, options_.max_redirects));
    }
    Url next;
    try {
      next = resolve_location(url, *result.location);
    } catch (const HubError& e) {
      throw HubError(Kind::BadResponse, 0, described + ": bad redirect: " + e.what());
    }
    if (url.scheme == "https" && next.scheme == "http") {
      throw HubError(Kind::BadResponse, 0, described + ": refusing a redirect from https to " + next.str(false));
    }
    // The token is for the Hub only: never hand it to the CDN or any other origin.
    if (next.host != url.host || next.port != url.port || next.scheme != url.scheme) send_token = false;
    url = std::move(next);
  }
}

}  // namespace mil::hub
