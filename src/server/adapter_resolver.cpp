// AdapterResolver (see adapter_resolver.h and docs/SERVING.md, "Adapters (LoRAX)").
//
// Store names it registers:
//   local folders   "local:<path relative to --adapter-dir, symlinks resolved>"
//   Hub downloads   "<owner>/<name>" for revision main, else "<owner>/<name>@<revision>"
//   merges          "merged:<16 hex digits>", a hash of (component names, weights, strategy)
// They are ordinary AdapterStore names: they show in list() and /v1/models, and a request may
// name them directly (no adapter_source) afterwards. The prefixes keep the three kinds from
// colliding with each other; a name registered from another source is never reused in their
// place (422).
//
// Threads: resolve() runs on blocking threads, several at once. The mutex guards the
// resolver's own maps only; downloads and adapter reads run unlocked, and `in_flight` makes
// concurrent resolves of one name wait for the first instead of downloading twice.
#include "server/adapter_resolver.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string_view>
#include <utility>

#include "formats/tensor_info.h"  // printable_name
#include "hub/hub_client.h"
#include "lora/adapter_store.h"

namespace mil::server {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxIdChars = 1024;
constexpr size_t kMaxMergeComponents = 32;
// Merged adapters hold their tensors in memory; beyond this many, the oldest idle ones go.
constexpr size_t kMaxMergedAdapters = 16;
constexpr std::string_view kLocalPrefix = "local:";
constexpr std::string_view kMergedPrefix = "merged:";
constexpr std::string_view kAdapterFiles[] = {"adapter_config.json", "adapter_model.safetensors"};

[[noreturn]] void invalid(const std::string& message) { throw AdapterError(422, "validation", message); }
[[noreturn]] void not_found(const std::string& message) { throw AdapterError(404, "not_found", message); }

bool has_control_char(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

// A path the client gave, to be taken relative to --adapter-dir: refuses what could leave it
// before touching the filesystem (symlinks are checked after canonicalization).
void check_relative_path(std::string_view what, std::string_view path, bool allow_absolute) {
  if (path.empty()) invalid(fmt::format("{}: the path is empty", what));
  if (path.size() > kMaxIdChars) invalid(fmt::format("{}: the path is longer than {} characters", what, kMaxIdChars));
  if (path.find('\0') != std::string_view::npos) invalid(fmt::format("{}: the path holds a NUL byte", what));
  if (has_control_char(path)) invalid(fmt::format("{}: the path holds control characters", what));
  if (!allow_absolute && path.front() == '/') {
    invalid(fmt::format("{} '{}': absolute paths are refused; name a folder inside --adapter-dir", what,
                        printable_name(path)));
  }
  for (const fs::path& part : fs::path(path)) {
    if (part == "..") {
      invalid(fmt::format("{} '{}': '..' is refused; name a folder inside --adapter-dir", what, printable_name(path)));
    }
  }
}

uint64_t fnv1a64(std::string_view text) {
  uint64_t h = 14695981039346656037ull;
  for (char c : text) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h;
}

AdapterError hub_error(const std::string& id, const hub::HubError& e) {
  using Kind = hub::HubError::Kind;
  switch (e.kind()) {
    case Kind::AccessDenied:
      return AdapterError(401, "unauthorized", fmt::format("access denied to Hub adapter '{}': {}", id, e.what()));
    case Kind::NotFound:
      return AdapterError(404, "not_found", fmt::format("Hub adapter '{}' not found: {}", id, e.what()));
    case Kind::InvalidArgument:
      return AdapterError(422, "validation", fmt::format("Hub adapter '{}': {}", id, e.what()));
    default:
      return AdapterError(424, "download_failed", fmt::format("downloading Hub adapter '{}' failed: {}", id, e.what()));
  }
}

}  // namespace

struct AdapterResolver::Impl {
  Impl(AdapterStore& s, AdapterResolverOptions o) : store(s), options(std::move(o)) {}

  AdapterStore& store;
  AdapterResolverOptions options;
  fs::path adapter_root;                // canonical; empty when local adapters are disabled
  std::optional<hub::HubClient> hub;    // empty when there is no cache folder

  mutable std::mutex mu;
  std::condition_variable registered_cv;
  std::set<std::string, std::less<>> in_flight;        // names being registered right now
  std::map<std::string, std::string, std::less<>> origin;  // name -> "local", "hub", "merged", "runtime"
  std::map<std::string, std::string, std::less<>> merged_by_key;  // merge key -> name
  std::map<std::string, std::string, std::less<>> key_of_merged;  // name -> merge key
  std::vector<std::string> merged_order;  // merged names, oldest first

  std::string origin_locked(const std::string& name) const {
    const auto it = origin.find(name);
    return it == origin.end() ? "startup" : it->second;
  }

  // Registers `name` with `add` unless already registered from `source`. Concurrent callers
  // for one name wait for the first; a failure is not remembered (the next call retries).
  void register_once(const std::string& name, const std::string& source, bool must_be_new,
                     const std::function<void()>& add) {
    std::unique_lock lock(mu);
    registered_cv.wait(lock, [&] { return !in_flight.contains(name); });
    if (store.contains(name)) {
      if (must_be_new) throw AdapterError(400, "bad_request", fmt::format("adapter '{}' is already registered", name));
      const std::string have = origin_locked(name);
      if (have != source) {
        invalid(fmt::format("adapter name '{}' is already registered from another source ({}), not {}", name,
                            have, source));
      }
      return;
    }
    in_flight.insert(name);
    lock.unlock();
    try {
      add();
    } catch (...) {
      lock.lock();
      in_flight.erase(name);
      registered_cv.notify_all();
      throw;
    }
    lock.lock();
    in_flight.erase(name);
    origin[name] = source;
    registered_cv.notify_all();
  }

  // A folder inside --adapter-dir, symlinks resolved. `not_found_is_404`: a missing folder is
  // an unknown adapter (resolve) rather than a bad path (load).
  fs::path local_folder(std::string_view what, std::string_view path, bool allow_absolute, bool not_found_is_404) {
    if (adapter_root.empty()) {
      invalid(fmt::format("{} '{}': local adapters are disabled (start the server with --adapter-dir)", what,
                          printable_name(path)));
    }
    check_relative_path(what, path, allow_absolute);
    const fs::path joined = fs::path(path).is_absolute() ? fs::path(path) : adapter_root / fs::path(path);
    std::error_code ec;
    const fs::path canon = fs::canonical(joined, ec);
    if (ec) {
      if (ec == std::errc::no_such_file_or_directory && not_found_is_404) {
        not_found(fmt::format("unknown adapter '{}': no such folder in --adapter-dir", printable_name(path)));
      }
      invalid(fmt::format("{} '{}': {}", what, printable_name(path), ec.message()));
    }
    const fs::path rel = canon.lexically_relative(adapter_root);
    if (rel.empty() || *rel.begin() == ".." || rel == ".") {
      invalid(fmt::format("{} '{}' leads outside --adapter-dir (through a symlink or an absolute path)", what,
                          printable_name(path)));
    }
    if (!fs::is_directory(canon, ec)) {
      invalid(fmt::format("{} '{}' is not a folder (expected adapter_config.json and adapter_model.safetensors "
                          "inside it)", what, printable_name(path)));
    }
    return canon;
  }

  std::string resolve_local(const std::string& id) {
    const fs::path folder = local_folder("local adapter", id, false, true);
    const std::string name = std::string(kLocalPrefix) + folder.lexically_relative(adapter_root).generic_string();
    if (!AdapterStore::valid_name(name)) {
      invalid(fmt::format("local adapter '{}': its folder name cannot be an adapter name (use at most 250 "
                          "characters from A-Z a-z 0-9 . _ - /)", printable_name(id)));
    }
    register_once(name, "local", false, [&] { store.add(name, folder.string()); });
    return name;
  }

  std::string resolve_hub(const std::string& id, const std::string& token) {
    const size_t at = id.find('@');
    const std::string repo = id.substr(0, at);
    const std::string revision = at == std::string::npos ? "main" : id.substr(at + 1);
    if (!hub::valid_repo_id(repo)) {
      invalid(fmt::format("invalid Hub adapter id '{}': expected owner/name[@revision], names of A-Z a-z 0-9 . _ - "
                          "(no '--' or '..')", printable_name(id)));
    }
    if (!hub::valid_revision(revision)) {
      invalid(fmt::format("invalid revision in Hub adapter id '{}': use A-Z a-z 0-9 . _ - /", printable_name(id)));
    }
    if (!hub) invalid("Hub adapters are disabled: no --huggingface-hub-cache folder");
    const std::string name = revision == "main" ? repo : repo + "@" + revision;
    if (!AdapterStore::valid_name(name)) invalid(fmt::format("Hub adapter id '{}' is too long", printable_name(id)));
    register_once(name, "hub", false, [&] {
      try {
        for (std::string_view file : kAdapterFiles) hub->download(repo, revision, file, token);
      } catch (const hub::HubError& e) {
        throw hub_error(name, e);
      }
      store.add(name, hub->revision_dir(repo, revision));
    });
    return name;
  }

  std::string resolve_merged(const AdapterSpec& spec) {
    if (spec.merge_strategy != "linear") {
      invalid(fmt::format("merge_strategy '{}' is not supported: MIL implements \"linear\"",
                          printable_name(spec.merge_strategy)));
    }
    const size_t n = spec.merge_ids.size();
    if (n > kMaxMergeComponents) invalid(fmt::format("merged_adapters: at most {} ids", kMaxMergeComponents));
    if (!spec.merge_weights.empty() && spec.merge_weights.size() != n) {
      invalid(fmt::format("merged_adapters: {} weights for {} ids", spec.merge_weights.size(), n));
    }
    std::vector<std::pair<std::string, float>> components;
    for (size_t i = 0; i < n; ++i) {
      const float w = spec.merge_weights.empty() ? 1.0f : spec.merge_weights[i];  // LoRAX's default: ones
      if (!std::isfinite(w)) invalid("merged_adapters: weights must be finite numbers");
      if (spec.merge_ids[i].empty()) invalid("merged_adapters: an id is empty");
      AdapterSpec one;
      one.id = spec.merge_ids[i];
      one.source = spec.source;
      one.api_token = spec.api_token;
      components.emplace_back(resolve_single(one), w);
    }
    // LoRAX loads a one-adapter "merge" as that adapter, weight unused.
    if (n == 1) return components.front().first;

    std::string key = "linear";
    for (const auto& [name, w] : components) key += fmt::format("|{}={:a}", name, w);
    std::string name;
    {
      std::lock_guard lock(mu);
      if (const auto it = merged_by_key.find(key); it != merged_by_key.end() && store.contains(it->second)) {
        return it->second;
      }
      for (uint64_t salt = 0;; ++salt) {  // a hash collision between different keys takes the next name
        name = fmt::format("{}{:016x}", kMergedPrefix, fnv1a64(salt == 0 ? key : key + "#" + std::to_string(salt)));
        const auto it = key_of_merged.find(name);
        if (it == key_of_merged.end() || it->second == key) break;
      }
    }
    register_once(name, "merged", false, [&] {
      try {
        store.add_merged(name, components);
      } catch (const AdapterError&) {
        throw;
      } catch (const Error& e) {
        invalid(fmt::format("merged_adapters: {}", e.what()));
      }
    });
    std::lock_guard lock(mu);
    if (!key_of_merged.contains(name)) {
      merged_by_key[key] = name;
      key_of_merged[name] = key;
      merged_order.push_back(name);
      evict_merged_locked(name);
    }
    return name;
  }

  // Beyond kMaxMergedAdapters, drops the oldest merged adapters that no request uses.
  void evict_merged_locked(const std::string& keep) {
    for (size_t i = 0; i < merged_order.size() && merged_order.size() > kMaxMergedAdapters;) {
      const std::string victim = merged_order[i];
      if (victim == keep || in_flight.contains(victim) || store.resident(victim) || store.pins(victim) > 0) {
        ++i;
        continue;
      }
      try {
        store.remove(victim);
      } catch (const Error&) {
        ++i;  // pinned meanwhile
        continue;
      }
      forget_locked(victim);
    }
  }

  void forget_locked(const std::string& name) {
    origin.erase(name);
    if (const auto it = key_of_merged.find(name); it != key_of_merged.end()) {
      merged_by_key.erase(it->second);
      key_of_merged.erase(it);
    }
    std::erase(merged_order, name);
  }

  std::string resolve_single(const AdapterSpec& spec) {
    const std::string& id = spec.id;
    if (id.size() > kMaxIdChars) invalid(fmt::format("adapter_id is longer than {} characters", kMaxIdChars));
    if (id.find('\0') != std::string::npos || has_control_char(id)) invalid("adapter_id holds control characters");
    if (spec.source.empty()) {
      if (store.contains(id)) return id;
      if (adapter_root.empty()) not_found(fmt::format("unknown adapter '{}'", printable_name(id)));
      return resolve_local(id);
    }
    if (spec.source == "local") return resolve_local(id);
    if (spec.source == "hub") return resolve_hub(id, spec.api_token.empty() ? options.hf_token : spec.api_token);
    invalid(fmt::format("adapter_source '{}' is not supported (expected \"local\" or \"hub\")",
                        printable_name(spec.source)));
  }
};

AdapterResolver::AdapterResolver(AdapterStore& store, AdapterResolverOptions options)
    : impl_(std::make_unique<Impl>(store, std::move(options))) {
  const AdapterResolverOptions& o = impl_->options;
  if (!o.adapter_dir.empty()) {
    std::error_code ec;
    impl_->adapter_root = fs::canonical(o.adapter_dir, ec);
    if (ec || !fs::is_directory(impl_->adapter_root, ec)) {
      fail("--adapter-dir '{}' is not an existing folder{}", o.adapter_dir, ec ? ": " + ec.message() : "");
    }
  }
  if (!o.hub_cache.empty()) {
    hub::HubOptions hub_options;
    hub_options.endpoint = o.hub_endpoint.empty() ? "https://huggingface.co" : o.hub_endpoint;
    hub_options.cache_dir = o.hub_cache;
    impl_->hub.emplace(std::move(hub_options));
  }
}

AdapterResolver::~AdapterResolver() = default;

std::string AdapterResolver::resolve(const AdapterSpec& spec) {
  if (!spec.merge_ids.empty()) return impl_->resolve_merged(spec);
  if (spec.id.empty()) return "";
  return impl_->resolve_single(spec);
}

void AdapterResolver::load(const std::string& name, const std::string& path) {
  if (!AdapterStore::valid_name(name)) {
    invalid(fmt::format("invalid lora_name '{}': use 1 to 256 characters from A-Z a-z 0-9 . _ - / : @ +",
                        printable_name(name)));
  }
  if (name.starts_with(kLocalPrefix) || name.starts_with(kMergedPrefix)) {
    invalid(fmt::format("lora_name '{}': the prefixes '{}' and '{}' are reserved", name, kLocalPrefix, kMergedPrefix));
  }
  if (impl_->store.contains(name)) throw AdapterError(400, "bad_request", fmt::format("adapter '{}' is already registered", name));
  const fs::path folder = impl_->local_folder("lora_path", path, true, false);
  impl_->register_once(name, "runtime", true, [&] { impl_->store.add(name, folder.string()); });
}

void AdapterResolver::unload(const std::string& name) {
  Impl& d = *impl_;
  std::lock_guard lock(d.mu);
  if (!d.store.contains(name) || d.in_flight.contains(name)) not_found(fmt::format("unknown adapter '{}'", printable_name(name)));
  try {
    d.store.remove(name);
  } catch (const Error& e) {
    if (!d.store.contains(name)) not_found(fmt::format("unknown adapter '{}'", printable_name(name)));
    invalid(e.what());  // pinned by running requests
  }
  d.forget_locked(name);
}

std::vector<AdapterInfo> AdapterResolver::list() const {
  const Impl& d = *impl_;
  std::vector<AdapterInfo> out;
  for (const std::string& name : d.store.names()) {
    AdapterInfo info;
    info.name = name;
    {
      std::lock_guard lock(d.mu);
      info.source = d.origin_locked(name);
    }
    info.resident = d.store.resident(name);
    info.pins = d.store.pins(name);
    out.push_back(std::move(info));
  }
  return out;
}

}  // namespace mil::server
