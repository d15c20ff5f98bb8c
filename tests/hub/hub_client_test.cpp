// HubClient against a local HTTP server laid out like the Hub: downloads, the cache (reuse
// without network, nothing half-written), HTTP errors, redirects (and where the token goes),
// dropped connections, limits, timeouts; plus URL parsing and the repo id / revision /
// filename rules.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>

#include "common/hub_test_server.h"
#include "hub/hub_client.h"

namespace mil::hub {
namespace {

namespace fs = std::filesystem;
using test::HubTestServer;

constexpr const char* kToken = "hf_SECRETtoken123";

class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = fs::temp_directory_path() / ("mil_hub_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Every regular file under `dir` (temp files included).
std::vector<std::string> files_under(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out.push_back(e.path().string());
  }
  return out;
}

std::string big_body(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + 7) % 251);
  return s;
}

class HubClientTest : public testing::Test {
 protected:
  HubClient client(std::function<void(HubOptions&)> tweak = {}) {
    HubOptions o;
    o.endpoint = server_.endpoint();
    o.cache_dir = cache_.path().string();
    o.connect_timeout = std::chrono::milliseconds(5000);
    o.io_timeout = std::chrono::milliseconds(5000);
    if (tweak) tweak(o);
    return HubClient(o);
  }
  // Runs f, expecting a HubError of `kind`; returns it.
  static HubError expect_error(const std::function<void()>& f, HubError::Kind kind) {
    try {
      f();
    } catch (const HubError& e) {
      EXPECT_EQ(static_cast<int>(e.kind()), static_cast<int>(kind)) << e.what();
      EXPECT_EQ(std::string(e.what()).find(kToken), std::string::npos) << "the token leaked: " << e.what();
      return e;
    }
    ADD_FAILURE() << "no HubError";
    return HubError(HubError::Kind::InvalidArgument, 0, "");
  }

  HubTestServer server_;
  TempDir cache_;
};

TEST_F(HubClientTest, DownloadsIntoTheCacheLayout) {
  const std::string body = big_body(300'000);  // several reads
  server_.on(HubTestServer::file_target("org/adapter", "main", "adapter_model.safetensors"), HubTestServer::Response::ok(body));
  const HubClient hub = client();
  const std::string path = hub.download("org/adapter", "main", "adapter_model.safetensors", kToken);
  EXPECT_EQ(path, (cache_.path() / "org--adapter" / "main" / "adapter_model.safetensors").string());
  EXPECT_EQ(read_file(path), body);
  ASSERT_EQ(server_.request_count(), 1u);
  EXPECT_EQ(server_.requests()[0].authorization, std::string("Bearer ") + kToken);
  EXPECT_EQ(files_under(cache_.path()).size(), 1u);  // no temp file left behind
}

TEST_F(HubClientTest, NoTokenNoAuthorizationHeader) {
  server_.on(HubTestServer::file_target("org/a", "main", "f.json"), HubTestServer::Response::ok("{}"));
  client().download("org/a", "main", "f.json", "");
  ASSERT_EQ(server_.request_count(), 1u);
  EXPECT_EQ(server_.requests()[0].authorization, "");
}

TEST_F(HubClientTest, CachedFileIsReusedWithoutNetwork) {
  server_.on(HubTestServer::file_target("org/a", "v1.0", "f.json"), HubTestServer::Response::ok("first"));
  const HubClient hub = client();
  const std::string path = hub.download("org/a", "v1.0", "f.json", "");
  server_.on(HubTestServer::file_target("org/a", "v1.0", "f.json"), HubTestServer::Response::ok("second"));
  EXPECT_EQ(hub.download("org/a", "v1.0", "f.json", ""), path);
  EXPECT_EQ(read_file(path), "first");
  EXPECT_EQ(server_.request_count(), 1u);
  // Another client on the same cache folder, pointed at a dead endpoint, still finds it.
  const HubClient offline = client([](HubOptions& o) { o.endpoint = "http://127.0.0.1:1"; });
  EXPECT_EQ(offline.download("org/a", "v1.0", "f.json", ""), path);
}

TEST_F(HubClientTest, ChunkedBodies) {
  const std::string body = big_body(100'000);
  server_.on(HubTestServer::file_target("org/a", "main", "f.bin"), HubTestServer::Response::ok(body).as_chunked());
  EXPECT_EQ(read_file(client().download("org/a", "main", "f.bin", "")), body);
}

TEST_F(HubClientTest, RevisionsWithSlashesAreEncoded) {
  server_.on("/org/a/resolve/refs%2Fpr%2F3/f.json", HubTestServer::Response::ok("pr"));
  const std::string path = client().download("org/a", "refs/pr/3", "f.json", "");
  EXPECT_EQ(read_file(path), "pr");
  EXPECT_EQ(path, (cache_.path() / "org--a" / "refs%2Fpr%2F3" / "f.json").string());
}

TEST_F(HubClientTest, EndpointPathPrefix) {
  server_.on("/mirror/org/a/resolve/main/f.json", HubTestServer::Response::ok("m"));
  const HubClient hub = client([&](HubOptions& o) { o.endpoint = server_.endpoint() + "/mirror/"; });
  EXPECT_EQ(read_file(hub.download("org/a", "main", "f.json", "")), "m");
}

TEST_F(HubClientTest, AccessDenied) {
  server_.on(HubTestServer::file_target("org/private", "main", "f.json"),
             HubTestServer::Response::with_status(401, "nope").header("X-Error-Message", "Invalid credentials in Authorization header"));
  server_.on(HubTestServer::file_target("org/gated", "main", "f.json"), HubTestServer::Response::with_status(403));
  const HubClient hub = client();
  const HubError e = expect_error([&] { hub.download("org/private", "main", "f.json", kToken); },
                                  HubError::Kind::AccessDenied);
  EXPECT_EQ(e.http_status(), 401);
  EXPECT_NE(std::string(e.what()).find("/org/private/resolve/main/f.json"), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("Invalid credentials"), std::string::npos) << e.what();
  EXPECT_EQ(expect_error([&] { hub.download("org/gated", "main", "f.json", kToken); }, HubError::Kind::AccessDenied)
                .http_status(),
            403);
  EXPECT_TRUE(files_under(cache_.path()).empty());
}

TEST_F(HubClientTest, NotFoundAndOtherStatuses) {
  server_.on(HubTestServer::file_target("org/a", "main", "broken"), HubTestServer::Response::with_status(500, "oops"));
  const HubClient hub = client();
  EXPECT_EQ(expect_error([&] { hub.download("org/missing", "main", "f.json", kToken); }, HubError::Kind::NotFound)
                .http_status(),
            404);
  const HubError e = expect_error([&] { hub.download("org/a", "main", "broken", kToken); }, HubError::Kind::HttpStatus);
  EXPECT_EQ(e.http_status(), 500);
  EXPECT_NE(std::string(e.what()).find("HTTP 500"), std::string::npos) << e.what();
  EXPECT_TRUE(files_under(cache_.path()).empty());
}

TEST_F(HubClientTest, FollowsRedirectsAndKeepsTheTokenOnTheHub) {
  // Hub -> relative redirect on the same host (token kept) -> absolute redirect to another
  // host name, the "CDN" (token dropped); the CDN URL carries a signed query string.
  const std::string body = big_body(5000);
  server_.on(HubTestServer::file_target("org/a", "main", "adapter_model.safetensors"),
             HubTestServer::Response::redirect(302, "../renamed/adapter_model.safetensors"));
  server_.on("/org/a/resolve/renamed/adapter_model.safetensors",
             HubTestServer::Response::redirect(307, "http://localhost:" + std::to_string(server_.port()) + "/cdn/blob?sig=abc"));
  server_.on("/cdn/blob?sig=abc", HubTestServer::Response::ok(body));
  const std::string path = client().download("org/a", "main", "adapter_model.safetensors", kToken);
  EXPECT_EQ(read_file(path), body);
  const auto reqs = server_.requests();
  ASSERT_EQ(reqs.size(), 3u);
  EXPECT_EQ(reqs[1].target, "/org/a/resolve/renamed/adapter_model.safetensors");
  EXPECT_EQ(reqs[0].authorization, std::string("Bearer ") + kToken);
  EXPECT_EQ(reqs[1].authorization, std::string("Bearer ") + kToken);
  EXPECT_EQ(reqs[2].target, "/cdn/blob?sig=abc");
  EXPECT_EQ(reqs[2].host, "localhost:" + std::to_string(server_.port()));
  EXPECT_EQ(reqs[2].authorization, "") << "the token went to another host";
}

TEST_F(HubClientTest, TooManyRedirects) {
  server_.on("/loop", HubTestServer::Response::redirect(302, "/loop"));
  server_.on(HubTestServer::file_target("org/a", "main", "f"), HubTestServer::Response::redirect(301, "/loop"));
  const HubError e = expect_error([&] { client().download("org/a", "main", "f", kToken); }, HubError::Kind::BadResponse);
  EXPECT_NE(std::string(e.what()).find("redirects"), std::string::npos) << e.what();
  EXPECT_EQ(server_.request_count(), 6u);  // the first request + 5 redirects
}

TEST_F(HubClientTest, BadRedirects) {
  server_.on(HubTestServer::file_target("org/a", "main", "noloc"), HubTestServer::Response::with_status(302));
  server_.on(HubTestServer::file_target("org/a", "main", "ftp"), HubTestServer::Response::redirect(302, "ftp://x/y"));
  const HubClient hub = client();
  expect_error([&] { hub.download("org/a", "main", "noloc", ""); }, HubError::Kind::BadResponse);
  expect_error([&] { hub.download("org/a", "main", "ftp", ""); }, HubError::Kind::BadResponse);
}

TEST_F(HubClientTest, DroppedConnectionLeavesNothingInTheCache) {
  const std::string body = big_body(200'000);
  server_.on(HubTestServer::file_target("org/a", "main", "adapter_model.safetensors"),
             HubTestServer::Response::ok(body).dropped_after(150'000));
  const HubError e = expect_error([&] { client().download("org/a", "main", "adapter_model.safetensors", kToken); },
                                  HubError::Kind::Network);
  const std::string msg = e.what();
  EXPECT_NE(msg.find(server_.endpoint() + "/org/a/resolve/main/adapter_model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("of 200000 bytes"), std::string::npos) << msg;
  EXPECT_TRUE(files_under(cache_.path()).empty());
  // A later, whole download succeeds.
  server_.on(HubTestServer::file_target("org/a", "main", "adapter_model.safetensors"), HubTestServer::Response::ok(body));
  EXPECT_EQ(read_file(client().download("org/a", "main", "adapter_model.safetensors", kToken)), body);
}

TEST_F(HubClientTest, BodyWithoutLengthIsRefused) {
  server_.on(HubTestServer::file_target("org/a", "main", "f"), HubTestServer::Response::ok("whatever").without_length());
  const HubError e = expect_error([&] { client().download("org/a", "main", "f", ""); }, HubError::Kind::BadResponse);
  EXPECT_NE(std::string(e.what()).find("Content-Length"), std::string::npos) << e.what();
  EXPECT_TRUE(files_under(cache_.path()).empty());
}

TEST_F(HubClientTest, SizeCap) {
  server_.on(HubTestServer::file_target("org/a", "main", "big"), HubTestServer::Response::ok(big_body(10'000)));
  server_.on(HubTestServer::file_target("org/a", "main", "bigchunked"), HubTestServer::Response::ok(big_body(10'000)).as_chunked());
  const HubClient hub = client([](HubOptions& o) { o.max_file_bytes = 4096; });
  expect_error([&] { hub.download("org/a", "main", "big", ""); }, HubError::Kind::BadResponse);
  expect_error([&] { hub.download("org/a", "main", "bigchunked", ""); }, HubError::Kind::BadResponse);
  EXPECT_TRUE(files_under(cache_.path()).empty());
}

TEST_F(HubClientTest, Timeout) {
  server_.on(HubTestServer::file_target("org/a", "main", "slow"), HubTestServer::Response::ok("late").delayed(std::chrono::milliseconds(1500)));
  const HubClient hub = client([](HubOptions& o) { o.io_timeout = std::chrono::milliseconds(200); });
  const HubError e = expect_error([&] { hub.download("org/a", "main", "slow", ""); }, HubError::Kind::Network);
  EXPECT_NE(std::string(e.what()).find("timed out"), std::string::npos) << e.what();
}

TEST_F(HubClientTest, ConnectionRefusedAndTlsToAPlainServer) {
  const HubClient refused = client([](HubOptions& o) { o.endpoint = "http://127.0.0.1:1"; });
  expect_error([&] { refused.download("org/a", "main", "f", kToken); }, HubError::Kind::Network);
  // https:// to a plain-HTTP port: the TLS handshake fails; nothing is sent in clear.
  const HubClient tls = client([&](HubOptions& o) { o.endpoint = "https://127.0.0.1:" + std::to_string(server_.port()); });
  const HubError e = expect_error([&] { tls.download("org/a", "main", "f", kToken); }, HubError::Kind::Network);
  EXPECT_NE(std::string(e.what()).find("TLS handshake"), std::string::npos) << e.what();
}

TEST_F(HubClientTest, BadNamesNeverReachTheNetworkOrLeaveTheCache) {
  const HubClient hub = client();
  for (const char* repo : {"", "adapter", "a/b/c", "../etc", "a/..", "org/..", "./a", "org/.", "org/a..b",
                           "org--x/a", "org/a--b", "-org/a", "org/a-", ".org/a", "org/a b", "org/a\n",
                           "org/a%2F..", "org\\a/b"}) {
    EXPECT_FALSE(valid_repo_id(repo)) << repo;
    expect_error([&] { hub.download(repo, "main", "f", ""); }, HubError::Kind::InvalidArgument);
  }
  for (const char* rev : {"", "..", ".", "a/../b", "/main", "main/", "a//b", "ma in", "main\r\n", "a\\b"}) {
    EXPECT_FALSE(valid_revision(rev)) << rev;
    expect_error([&] { hub.download("org/a", rev, "f", ""); }, HubError::Kind::InvalidArgument);
  }
  for (const char* file : {"", "..", "../x", "/etc/passwd", "a//b", "a/./b", "a/", "a b", "a\\..\\b"}) {
    EXPECT_FALSE(valid_filename(file)) << file;
    expect_error([&] { hub.download("org/a", "main", file, ""); }, HubError::Kind::InvalidArgument);
  }
  expect_error([&] { hub.download("org/a", "main", "f", "tok\r\nX-Evil: 1"); }, HubError::Kind::InvalidArgument);
  EXPECT_EQ(server_.request_count(), 0u);
  EXPECT_TRUE(valid_repo_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
  EXPECT_TRUE(valid_repo_id("a.b_c/x-y.z_1"));
  EXPECT_TRUE(valid_revision("main"));
  EXPECT_TRUE(valid_revision("0123456789abcdef0123456789abcdef01234567"));
  EXPECT_TRUE(valid_revision("refs/pr/1"));
  EXPECT_TRUE(valid_filename("sub/dir/adapter_config.json"));
}

TEST(Url, Parses) {
  Url u = parse_url("https://huggingface.co/org/a/resolve/main/f.json");
  EXPECT_EQ(u.scheme, "https");
  EXPECT_EQ(u.host, "huggingface.co");
  EXPECT_EQ(u.port, 443);
  EXPECT_EQ(u.target, "/org/a/resolve/main/f.json");
  u = parse_url("HTTP://Example.COM:8080?x=1#frag");
  EXPECT_EQ(u.scheme, "http");
  EXPECT_EQ(u.host, "example.com");
  EXPECT_EQ(u.port, 8080);
  EXPECT_EQ(u.target, "/?x=1");
  EXPECT_EQ(u.str(), "http://example.com:8080/?x=1");
  EXPECT_EQ(u.str(false), "http://example.com:8080/");
  u = parse_url("http://[::1]:99/p");
  EXPECT_EQ(u.host, "::1");
  EXPECT_EQ(u.port, 99);
  EXPECT_EQ(u.str(), "http://[::1]:99/p");
  EXPECT_EQ(parse_url("http://h").target, "/");
  for (const char* bad : {"", "huggingface.co", "ftp://h/", "http://", "http:///x", "http://user@h/", "http://h:/",
                          "http://h:0/", "http://h:65536/", "http://h:99999999999999999999/", "http://h:8a/",
                          "http://[::1/", "http://[zz]/", "http://[::1]x/", "http://h o/", "http://h/\x01",
                          "http://-h/", "http://h\xc3\xa9/"}) {
    EXPECT_THROW(parse_url(bad), HubError) << bad;
  }
  EXPECT_THROW(parse_url("http://h/" + std::string(9000, 'a')), HubError);
}

TEST(Url, ResolvesRedirectLocations) {
  const Url base = parse_url("https://hub.example/org/a/resolve/main/f.json?x=1");
  EXPECT_EQ(resolve_location(base, "https://cdn.example/blob?sig=2").str(), "https://cdn.example/blob?sig=2");
  EXPECT_EQ(resolve_location(base, "//cdn.example:444/b").str(), "https://cdn.example:444/b");
  EXPECT_EQ(resolve_location(base, "/api/x").str(), "https://hub.example/api/x");
  EXPECT_EQ(resolve_location(base, "g.json").str(), "https://hub.example/org/a/resolve/main/g.json");
  EXPECT_EQ(resolve_location(base, "../v2/f.json").str(), "https://hub.example/org/a/resolve/v2/f.json");
  EXPECT_EQ(resolve_location(base, "../../../../../../x").str(), "https://hub.example/x");
  EXPECT_EQ(resolve_location(base, "?y=2").str(), "https://hub.example/org/a/resolve/main/f.json?y=2");
  EXPECT_THROW(resolve_location(base, ""), HubError);
  EXPECT_THROW(resolve_location(base, "javascript:alert(1)"), HubError);
  EXPECT_THROW(resolve_location(base, "/a b"), HubError);
}

}  // namespace
}  // namespace mil::hub
