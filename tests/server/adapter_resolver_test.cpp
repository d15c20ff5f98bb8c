// AdapterResolver: LoRAX adapter parameters to AdapterStore names. Registered names, folders
// inside --adapter-dir (and every way out of it refused), Hub downloads from a local test
// server (tokens, errors, one download for concurrent requests), merged adapters (reused for
// the same merge), and the load/unload/list management.
#include "server/adapter_resolver.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <thread>

#include "common/hub_test_server.h"
#include "lora/adapter_store.h"
#include "lora/adapter_writer.h"

namespace mil::server {
namespace {

namespace fs = std::filesystem;
using test::HubTestServer;

constexpr const char* kEnvToken = "hf_ENVtoken";
constexpr const char* kRequestToken = "hf_REQUESTtoken";

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

AdapterError adapter_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const AdapterError& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not an AdapterError: " << e.what();
    return AdapterError(0, "", "");
  }
  ADD_FAILURE() << "no error";
  return AdapterError(0, "", "");
}

AdapterSpec spec(std::string id, std::string source = "", std::string token = "") {
  AdapterSpec s;
  s.id = std::move(id);
  s.source = std::move(source);
  s.api_token = std::move(token);
  return s;
}

AdapterSpec merge(std::vector<std::string> ids, std::vector<float> weights, std::string strategy = "linear",
                  std::string source = "") {
  AdapterSpec s;
  s.merge_ids = std::move(ids);
  s.merge_weights = std::move(weights);
  s.merge_strategy = std::move(strategy);
  s.source = std::move(source);
  return s;
}

// --adapter-dir holds: alpha/ gamma/ nested/beta/ (rank 2) wide/ (rank 4), a symlink `alias` to
// alpha, a symlink `escape` to a folder outside, a file `file.txt`. Outside: `outside/` (a valid
// adapter that must never be reachable).
class AdapterResolverTest : public testing::Test {
 protected:
  AdapterResolverTest() {
    static int counter = 0;
    tmp_ = fs::temp_directory_path() / ("mil_resolver_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(tmp_);
    root_ = tmp_ / "adapters";
    fs::create_directories(root_);
    put_adapter(root_ / "alpha", 2, 4, 0);
    put_adapter(root_ / "gamma", 2, 8, 1);
    put_adapter(root_ / "nested" / "beta", 2, 4, 0);
    put_adapter(root_ / "wide", 4, 4, 0);
    put_adapter(tmp_ / "outside", 2, 4, 0);
    fs::create_directory_symlink(root_ / "alpha", root_ / "alias");
    fs::create_directory_symlink(tmp_ / "outside", root_ / "escape");
    std::ofstream(root_ / "file.txt") << "not an adapter";
    startup_.standard(base_, 2, 4, {LoraTarget::Q, LoraTarget::V});
    store_.add("startup1", startup_.path());
  }
  ~AdapterResolverTest() override {
    std::error_code ignored;
    fs::remove_all(tmp_, ignored);
  }

  void put_adapter(const fs::path& dir, int64_t rank, double alpha, int variant) {
    test::AdapterDir src;
    src.standard(base_, rank, alpha, variant == 0 ? std::vector{LoraTarget::Q, LoraTarget::V}
                                                  : std::vector{LoraTarget::Q, LoraTarget::K});
    fs::create_directories(dir);
    fs::copy(src.path(), dir, fs::copy_options::recursive);
  }

  AdapterResolverOptions options(bool local = true) const {
    AdapterResolverOptions o;
    o.adapter_dir = local ? root_.string() : "";
    o.hub_cache = (tmp_ / "hub").string();
    o.hub_endpoint = hub_.endpoint();
    o.hf_token = kEnvToken;
    return o;
  }

  // Serves an adapter for `repo` at `rev` on the test Hub.
  void publish(const std::string& repo, const std::string& rev = "main") {
    for (const char* file : {"adapter_config.json", "adapter_model.safetensors"}) {
      hub_.on(HubTestServer::file_target(repo, rev, file),
              HubTestServer::Response::ok(read_file(fs::path(startup_.path()) / file)));
    }
  }

  std::optional<AdapterInfo> info(const AdapterResolver& r, const std::string& name) const {
    for (const AdapterInfo& i : r.list()) {
      if (i.name == name) return i;
    }
    return std::nullopt;
  }

  ModelConfig base_ = test::tiny_base();
  AdapterStore store_{base_, ShardSpec{}, AdapterStore::Limits{4, size_t{1} << 30}};
  fs::path tmp_, root_;
  test::AdapterDir startup_;
  HubTestServer hub_;
};

TEST_F(AdapterResolverTest, BaseModelAndRegisteredNames) {
  AdapterResolver r(store_, options());
  EXPECT_EQ(r.resolve(spec("")), "");
  EXPECT_EQ(r.resolve(spec("startup1")), "startup1");
  const auto i = info(r, "startup1");
  ASSERT_TRUE(i);
  EXPECT_EQ(i->source, "startup");
  EXPECT_FALSE(i->resident);
  EXPECT_EQ(i->pins, 0);
}

TEST_F(AdapterResolverTest, UnknownAdapterIs404) {
  AdapterResolver r(store_, options());
  AdapterError e = adapter_error([&] { r.resolve(spec("nope")); });
  EXPECT_EQ(e.status(), 404);
  EXPECT_EQ(e.type(), "not_found");
  EXPECT_EQ(adapter_error([&] { r.resolve(spec("nope", "local")); }).status(), 404);
  AdapterResolver no_dir(store_, options(false));
  EXPECT_EQ(adapter_error([&] { no_dir.resolve(spec("alpha")); }).status(), 404);
  EXPECT_EQ(adapter_error([&] { no_dir.resolve(spec("alpha", "local")); }).status(), 422);
  EXPECT_EQ(adapter_error([&] { r.resolve(spec("alpha", "s3")); }).status(), 422);
}

TEST_F(AdapterResolverTest, LocalFoldersRegisterOnceUnderLocalNames) {
  AdapterResolver r(store_, options());
  EXPECT_EQ(r.resolve(spec("alpha", "local")), "local:alpha");
  EXPECT_EQ(r.resolve(spec("alpha")), "local:alpha");        // no source: the folder, same name
  EXPECT_EQ(r.resolve(spec("./alpha/", "local")), "local:alpha");
  EXPECT_EQ(r.resolve(spec("alias", "local")), "local:alpha");  // a symlink inside: its target
  EXPECT_EQ(r.resolve(spec("local:alpha")), "local:alpha");     // the registered name itself
  EXPECT_EQ(r.resolve(spec("nested/beta", "local")), "local:nested/beta");
  EXPECT_EQ(store_.names(), (std::vector<std::string>{"local:alpha", "local:nested/beta", "startup1"}));
  const auto i = info(r, "local:alpha");
  ASSERT_TRUE(i);
  EXPECT_EQ(i->source, "local");
}

TEST_F(AdapterResolverTest, PathsLeavingTheAdapterDirAreRefused) {
  AdapterResolver r(store_, options());
  const std::string nul("al\0pha", 6);
  for (const std::string& id : {std::string("../outside"), std::string("alpha/../../outside"), std::string(".."),
                                std::string("/etc"), (tmp_ / "outside").string(), (root_ / "alpha").string(),
                                std::string("escape"), std::string("escape/"), std::string("nested/../../outside"),
                                nul, std::string("alpha\n"), std::string("file.txt"), std::string(".")}) {
    for (const char* source : {"local", ""}) {
      const AdapterError e = adapter_error([&] { r.resolve(spec(id, source)); });
      EXPECT_EQ(e.status(), 422) << "'" << id << "' source '" << source << "': " << e.what();
      EXPECT_EQ(e.type(), "validation");
    }
  }
  const AdapterError e = adapter_error([&] { r.resolve(spec("escape", "local")); });
  EXPECT_NE(std::string(e.what()).find("outside --adapter-dir"), std::string::npos) << e.what();
  EXPECT_NE(std::string(adapter_error([&] { r.resolve(spec("../outside", "local")); }).what()).find("'..'"),
            std::string::npos);
  EXPECT_NE(std::string(adapter_error([&] { r.resolve(spec("/etc", "local")); }).what()).find("absolute"),
            std::string::npos);
  EXPECT_EQ(store_.names(), (std::vector<std::string>{"startup1"}));
}

TEST_F(AdapterResolverTest, HubDownloadsOnceAndRegistersUnderTheId) {
  publish("org/ad");
  publish("org/ad", "v2");
  AdapterResolver r(store_, options());
  EXPECT_EQ(r.resolve(spec("org/ad", "hub")), "org/ad");
  ASSERT_EQ(hub_.request_count(), 2u);
  for (const auto& req : hub_.requests()) EXPECT_EQ(req.authorization, std::string("Bearer ") + kEnvToken);
  EXPECT_TRUE(fs::is_regular_file(tmp_ / "hub" / "org--ad" / "main" / "adapter_model.safetensors"));
  EXPECT_EQ(r.resolve(spec("org/ad", "hub")), "org/ad");
  EXPECT_EQ(r.resolve(spec("org/ad@main", "hub")), "org/ad");
  EXPECT_EQ(r.resolve(spec("org/ad")), "org/ad");  // registered now
  EXPECT_EQ(hub_.request_count(), 2u);
  // A revision, with the request's own token.
  EXPECT_EQ(r.resolve(spec("org/ad@v2", "hub", kRequestToken)), "org/ad@v2");
  const auto reqs = hub_.requests();
  ASSERT_EQ(reqs.size(), 4u);
  EXPECT_EQ(reqs[2].target, "/org/ad/resolve/v2/adapter_config.json");
  EXPECT_EQ(reqs[3].authorization, std::string("Bearer ") + kRequestToken);
  const auto i = info(r, "org/ad@v2");
  ASSERT_TRUE(i);
  EXPECT_EQ(i->source, "hub");
  // A fresh resolver (server restart) finds the cache: no network.
  AdapterStore other(base_, ShardSpec{}, AdapterStore::Limits{2, size_t{1} << 30});
  AdapterResolver again(other, options());
  EXPECT_EQ(again.resolve(spec("org/ad", "hub")), "org/ad");
  EXPECT_EQ(hub_.request_count(), 4u);
}

TEST_F(AdapterResolverTest, HubErrorsMapToStatuses) {
  hub_.on(HubTestServer::file_target("org/private", "main", "adapter_config.json"), HubTestServer::Response::with_status(401));
  hub_.on(HubTestServer::file_target("org/gated", "main", "adapter_config.json"), HubTestServer::Response::with_status(403));
  hub_.on(HubTestServer::file_target("org/flaky", "main", "adapter_config.json"), HubTestServer::Response::ok("{}"));
  hub_.on(HubTestServer::file_target("org/flaky", "main", "adapter_model.safetensors"),
          HubTestServer::Response::ok(std::string(10000, 'x')).dropped_after(5000));
  hub_.on(HubTestServer::file_target("org/down", "main", "adapter_config.json"), HubTestServer::Response::with_status(503));
  AdapterResolver r(store_, options());
  const auto check = [&](const std::string& id, int status, const std::string& type) {
    const AdapterError e = adapter_error([&] { r.resolve(spec(id, "hub", kRequestToken)); });
    EXPECT_EQ(e.status(), status) << id << ": " << e.what();
    EXPECT_EQ(e.type(), type) << id;
    EXPECT_EQ(std::string(e.what()).find(kRequestToken), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find(kEnvToken), std::string::npos) << e.what();
    EXPECT_FALSE(store_.contains(id));
  };
  check("org/private", 401, "unauthorized");
  check("org/gated", 401, "unauthorized");
  check("org/missing", 404, "not_found");
  check("org/flaky", 424, "download_failed");
  check("org/down", 424, "download_failed");
  check("../etc", 422, "validation");
  check("org/a/b", 422, "validation");
  check("org/ad@../x", 422, "validation");
  EXPECT_FALSE(fs::exists(tmp_ / "hub" / "org--flaky" / "main" / "adapter_model.safetensors"));
  for (const auto& e : fs::recursive_directory_iterator(tmp_ / "hub")) {
    if (e.is_regular_file()) {
      EXPECT_EQ(e.path().filename(), "adapter_config.json") << e.path();  // only whole files
    }
  }
}

TEST_F(AdapterResolverTest, ConcurrentHubResolvesDownloadOnce) {
  for (const char* file : {"adapter_config.json", "adapter_model.safetensors"}) {
    hub_.on(HubTestServer::file_target("org/slow", "main", file),
            HubTestServer::Response::ok(read_file(fs::path(startup_.path()) / file)).delayed(std::chrono::milliseconds(150)));
  }
  AdapterResolver r(store_, options());
  std::vector<std::string> names(6);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < names.size(); ++i) {
    threads.emplace_back([&, i] { names[i] = r.resolve(spec("org/slow", "hub")); });
  }
  for (std::thread& t : threads) t.join();
  for (const std::string& n : names) EXPECT_EQ(n, "org/slow");
  EXPECT_EQ(hub_.request_count(), 2u);
}

TEST_F(AdapterResolverTest, MergedAdaptersAreRegisteredOnceAndReused) {
  AdapterResolver r(store_, options());
  const std::string m = r.resolve(merge({"alpha", "gamma"}, {0.5f, 0.5f}));
  EXPECT_TRUE(m.starts_with("merged:")) << m;
  EXPECT_TRUE(store_.contains(m));
  const size_t registered = store_.registered_count();  // startup1, local:alpha, local:gamma, the merge
  EXPECT_EQ(registered, 4u);
  EXPECT_EQ(r.resolve(merge({"alpha", "gamma"}, {0.5f, 0.5f})), m);
  EXPECT_EQ(r.resolve(merge({"local:alpha", "local:gamma"}, {0.5f, 0.5f})), m);  // same components
  EXPECT_EQ(store_.registered_count(), registered);
  const std::string other = r.resolve(merge({"alpha", "gamma"}, {0.25f, 0.75f}));
  const std::string swapped = r.resolve(merge({"gamma", "alpha"}, {0.5f, 0.5f}));  // first config's scale differs
  const std::string ones = r.resolve(merge({"alpha", "gamma"}, {}));               // LoRAX's default weights
  EXPECT_NE(other, m);
  EXPECT_NE(swapped, m);
  EXPECT_NE(ones, m);
  EXPECT_EQ(r.resolve(merge({"alpha", "gamma"}, {1.0f, 1.0f})), ones);
  const auto i = info(r, m);
  ASSERT_TRUE(i);
  EXPECT_EQ(i->source, "merged");
  // A one-adapter merge is that adapter (as LoRAX loads it).
  EXPECT_EQ(r.resolve(merge({"alpha"}, {0.3f})), "local:alpha");
  // The merge runs like any adapter.
  const int32_t slot = store_.acquire(m);
  EXPECT_EQ(store_.slot_name(slot), m);
  store_.release(slot);
}

TEST_F(AdapterResolverTest, MergeRefusals) {
  AdapterResolver r(store_, options());
  const auto status = [&](const AdapterSpec& s) { return adapter_error([&] { r.resolve(s); }).status(); };
  EXPECT_EQ(status(merge({"alpha", "gamma"}, {0.5f, 0.5f}, "ties")), 422);
  EXPECT_EQ(status(merge({"alpha", "gamma"}, {0.5f, 0.5f}, "dare_linear")), 422);
  EXPECT_EQ(status(merge({"alpha", "gamma"}, {0.5f})), 422);
  EXPECT_EQ(status(merge({"alpha", "gamma"}, {0.5f, std::nanf("")})), 422);
  EXPECT_EQ(status(merge({"alpha", ""}, {})), 422);
  EXPECT_EQ(status(merge({"alpha", "nope"}, {})), 404);
  EXPECT_EQ(status(merge({"alpha", "../outside"}, {})), 422);
  const AdapterError e = adapter_error([&] { r.resolve(merge({"alpha", "wide"}, {})); });  // ranks 2 and 4
  EXPECT_EQ(e.status(), 422);
  EXPECT_NE(std::string(e.what()).find("ranks differ"), std::string::npos) << e.what();
}

TEST_F(AdapterResolverTest, MergedHubAdapters) {
  publish("org/one");
  publish("org/two");
  AdapterResolver r(store_, options());
  const std::string m = r.resolve(merge({"org/one", "org/two"}, {1.0f, -1.0f}, "linear", "hub"));
  EXPECT_TRUE(m.starts_with("merged:"));
  EXPECT_TRUE(store_.contains("org/one"));
  EXPECT_TRUE(store_.contains("org/two"));
}

TEST_F(AdapterResolverTest, LoadUnloadList) {
  AdapterResolver r(store_, options());
  r.load("mine", "alpha");
  EXPECT_EQ(r.resolve(spec("mine")), "mine");
  auto i = info(r, "mine");
  ASSERT_TRUE(i);
  EXPECT_EQ(i->source, "runtime");
  const AdapterError dup = adapter_error([&] { r.load("mine", "gamma"); });
  EXPECT_EQ(dup.status(), 400);
  EXPECT_EQ(adapter_error([&] { r.load("startup1", "gamma"); }).status(), 400);
  r.load("abs", (root_ / "gamma").string());  // absolute, but inside --adapter-dir
  EXPECT_TRUE(store_.contains("abs"));
  for (const std::string& path : {(tmp_ / "outside").string(), std::string("../outside"), std::string("escape"),
                                  std::string(""), std::string("missing"), std::string("file.txt")}) {
    EXPECT_EQ(adapter_error([&] { r.load("x", path); }).status(), 422) << path;
  }
  EXPECT_EQ(adapter_error([&] { r.load("bad name", "alpha"); }).status(), 422);
  EXPECT_EQ(adapter_error([&] { r.load("local:alpha", "alpha"); }).status(), 422);
  EXPECT_EQ(adapter_error([&] { r.load("merged:0", "alpha"); }).status(), 422);
  EXPECT_FALSE(store_.contains("x"));

  // Pinned by a running request: 422; then unloaded; then unknown.
  const int32_t slot = store_.acquire("mine");
  i = info(r, "mine");
  ASSERT_TRUE(i);
  EXPECT_TRUE(i->resident);
  EXPECT_EQ(i->pins, 1);
  EXPECT_EQ(adapter_error([&] { r.unload("mine"); }).status(), 422);
  store_.release(slot);
  r.unload("mine");
  EXPECT_FALSE(store_.contains("mine"));
  EXPECT_EQ(adapter_error([&] { r.unload("mine"); }).status(), 404);
  EXPECT_EQ(adapter_error([&] { r.resolve(spec("mine")); }).status(), 404);
  // A name can be loaded again once unloaded.
  r.load("mine", "gamma");
  EXPECT_TRUE(store_.contains("mine"));

  std::vector<std::string> names;
  for (const AdapterInfo& a : r.list()) names.push_back(a.name);
  EXPECT_EQ(names, (std::vector<std::string>{"abs", "mine", "startup1"}));
}

TEST_F(AdapterResolverTest, NamesFromOtherSourcesAreNotTakenOver) {
  publish("org/ad");
  AdapterResolver r(store_, options());
  r.load("org/ad", "alpha");  // a runtime adapter named like a Hub repo
  const AdapterError e = adapter_error([&] { r.resolve(spec("org/ad", "hub")); });
  EXPECT_EQ(e.status(), 422);
  EXPECT_NE(std::string(e.what()).find("another source"), std::string::npos) << e.what();
  EXPECT_EQ(hub_.request_count(), 0u);
}

TEST_F(AdapterResolverTest, BadAdapterDirFailsAtStartup) {
  AdapterResolverOptions o = options();
  o.adapter_dir = (tmp_ / "does-not-exist").string();
  EXPECT_THROW({ AdapterResolver bad(store_, o); }, Error);
  o = options();
  o.hub_endpoint = "ftp://example.com";
  EXPECT_THROW({ AdapterResolver bad(store_, o); }, Error);
}

}  // namespace
}  // namespace mil::server
