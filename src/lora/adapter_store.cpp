#include "lora/adapter_store.h"

#include <algorithm>

#include "core/error.h"

namespace mil {
namespace {

constexpr size_t kMaxNameChars = 256;
constexpr int kMaxSlots = 4096;

}  // namespace

// Names travel through URLs, logs and metrics labels: keep them to a safe, HF-hub-like set.
bool AdapterStore::valid_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameChars) return false;
  return std::all_of(name.begin(), name.end(), [](char ch) {
    const auto c = static_cast<unsigned char>(ch);
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '-' || c == '/' || c == ':' || c == '@' || c == '+';
  });
}

AdapterStore::AdapterStore(const ModelConfig& base, ShardSpec shard, Limits limits)
    : base_(base), shard_(shard), limits_(limits) {
  MIL_CHECK(limits.max_resident >= 1 && limits.max_resident <= kMaxSlots,
            "adapter store: max resident adapters must be in [1, {}], got {}", kMaxSlots,
            limits.max_resident);
  MIL_CHECK(limits.max_bytes > 0, "adapter store: the memory limit must be positive");
  MIL_CHECK(shard.world >= 1 && shard.rank >= 0 && shard.rank < shard.world,
            "adapter store: invalid shard rank {} of {}", shard.rank, shard.world);
  slots_.assign(limits.max_resident, nullptr);
  tables_.resize(base.num_layers * kNumLoraTargets);
  for (Table& t : tables_) {
    t.a.assign(limits.max_resident, Tensor{});
    t.b.assign(limits.max_resident, Tensor{});
    t.scale.assign(limits.max_resident, 0.0f);
    t.proj = LoraProjection{t.a.data(), t.b.data(), t.scale.data(), limits.max_resident};
  }
}

void AdapterStore::add(const std::string& name, const std::string& path) {
  if (!valid_name(name)) {
    fail("invalid adapter name '{}': use 1 to {} characters from A-Z a-z 0-9 . _ - / : @ +",
         printable_name(name), kMaxNameChars);
  }
  {
    std::lock_guard lock(mu_);
    MIL_CHECK(!entries_.contains(name), "adapter '{}' is already registered", name);
  }
  // Outside the lock: parsing touches the disk, and other threads may be acquiring.
  size_t bytes = 0;
  {
    const PeftAdapter peft(path, base_);
    bytes = lora_adapter_bytes(peft, base_, shard_);
  }
  MIL_CHECK(bytes <= limits_.max_bytes,
            "adapter '{}' ({}) needs {} bytes, more than the {} bytes allowed for all resident "
            "adapters", name, path, bytes, limits_.max_bytes);
  std::lock_guard lock(mu_);
  MIL_CHECK(!entries_.contains(name), "adapter '{}' is already registered", name);
  Entry& e = entries_[name];
  e.path = path;
  e.bytes = bytes;
  e.registration = ++registrations_;
}

void AdapterStore::add_merged(const std::string& name,
                              const std::vector<std::pair<std::string, float>>& components) {
  if (!valid_name(name)) {
    fail("invalid adapter name '{}': use 1 to {} characters from A-Z a-z 0-9 . _ - / : @ +",
         printable_name(name), kMaxNameChars);
  }
  MIL_CHECK(!components.empty(), "merged adapter '{}': no adapters to merge", name);
  // Components in memory (resident or merged) are shared; the others are read from disk
  // outside the lock, like acquire() does.
  std::vector<std::shared_ptr<const LoraAdapter>> loaded(components.size());
  std::vector<std::string> paths(components.size());
  {
    std::lock_guard lock(mu_);
    MIL_CHECK(!entries_.contains(name), "adapter '{}' is already registered", name);
    for (size_t i = 0; i < components.size(); ++i) {
      Entry& e = find_locked(components[i].first, "merge");
      loaded[i] = e.memory ? e.memory : e.adapter;
      paths[i] = e.path;
    }
  }
  for (size_t i = 0; i < components.size(); ++i) {
    if (!loaded[i]) {
      loaded[i] = std::make_shared<const LoraAdapter>(
          load_lora_adapter(components[i].first, paths[i], base_, shard_));
    }
  }
  std::vector<WeightedLoraAdapter> weighted;
  weighted.reserve(components.size());
  for (size_t i = 0; i < components.size(); ++i) weighted.push_back({loaded[i].get(), components[i].second});
  auto merged = std::make_shared<const LoraAdapter>(merge_lora_adapters_linear(name, weighted));
  MIL_CHECK(merged->bytes() <= limits_.max_bytes,
            "merged adapter '{}' needs {} bytes, more than the {} bytes allowed for all resident "
            "adapters", name, merged->bytes(), limits_.max_bytes);

  std::lock_guard lock(mu_);
  MIL_CHECK(!entries_.contains(name), "adapter '{}' is already registered", name);
  Entry& e = entries_[name];
  e.bytes = merged->bytes();
  e.memory = std::move(merged);
  e.registration = ++registrations_;
}

void AdapterStore::remove(const std::string& name) {
  std::lock_guard lock(mu_);
  Entry& e = find_locked(name, "remove");
  MIL_CHECK(e.pins == 0, "cannot remove adapter '{}': {} running request(s) use it", name, e.pins);
  if (e.slot >= 0) free_slot_locked(e.slot);
  entries_.erase(name);
}

bool AdapterStore::contains(const std::string& name) const {
  std::lock_guard lock(mu_);
  return entries_.contains(name);
}

std::vector<std::string> AdapterStore::names() const {
  std::lock_guard lock(mu_);
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, e] : entries_) out.push_back(name);
  return out;
}

bool AdapterStore::resident(const std::string& name) const {
  std::lock_guard lock(mu_);
  auto it = entries_.find(name);
  return it != entries_.end() && it->second.slot >= 0;
}

size_t AdapterStore::registered_count() const {
  std::lock_guard lock(mu_);
  return entries_.size();
}

size_t AdapterStore::resident_count() const {
  std::lock_guard lock(mu_);
  return static_cast<size_t>(std::count_if(slots_.begin(), slots_.end(), [](Entry* e) { return e != nullptr; }));
}

size_t AdapterStore::resident_bytes() const {
  std::lock_guard lock(mu_);
  return resident_bytes_;
}

std::string AdapterStore::slot_name(int32_t slot) const {
  std::lock_guard lock(mu_);
  MIL_CHECK(slot >= 0 && slot < num_slots(), "adapter slot {} is out of range", slot);
  if (slots_[slot] == nullptr) return "";
  for (const auto& [name, e] : entries_) {
    if (&e == slots_[slot]) return name;
  }
  return "";
}

int32_t AdapterStore::pins(const std::string& name) const {
  std::lock_guard lock(mu_);
  auto it = entries_.find(name);
  return it == entries_.end() ? 0 : it->second.pins;
}

uint64_t AdapterStore::registration(const std::string& name) const {
  std::lock_guard lock(mu_);
  auto it = entries_.find(name);
  return it == entries_.end() ? 0 : it->second.registration;
}

uint64_t AdapterStore::slot_registration(int32_t slot) const {
  std::lock_guard lock(mu_);
  MIL_CHECK(slot >= 0 && slot < num_slots(), "adapter slot {} is out of range", slot);
  return slots_[slot] == nullptr ? 0 : slots_[slot]->registration;
}

AdapterStore::Entry& AdapterStore::find_locked(const std::string& name, const char* action) {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    fail("unknown adapter '{}' (cannot {} it; {} adapter(s) are registered)", printable_name(name),
         action, entries_.size());
  }
  return it->second;
}

int32_t AdapterStore::acquire(const std::string& name) {
  std::string path;
  std::shared_ptr<const LoraAdapter> memory;
  uint64_t registration = 0;
  {
    std::lock_guard lock(mu_);
    Entry& e = find_locked(name, "acquire");
    e.last_used = ++clock_;
    if (e.slot >= 0) {
      ++e.pins;
      return e.slot;
    }
    // Fail before reading the weights when even evicting every unpinned resident won't do.
    size_t pinned_bytes = 0;
    int pinned = 0;
    for (Entry* r : slots_) {
      if (r != nullptr && r->pins > 0) {
        ++pinned;
        pinned_bytes += r->bytes;
      }
    }
    if (pinned >= limits_.max_resident || pinned_bytes + e.bytes > limits_.max_bytes) {
      fail("cannot make adapter '{}' resident: running requests pin {} adapter(s) of {} bytes "
           "(limits: {} adapters, {} bytes; it needs {} bytes)", name, pinned, pinned_bytes,
           limits_.max_resident, limits_.max_bytes, e.bytes);
    }
    path = e.path;
    memory = e.memory;
    registration = e.registration;
  }

  // Read from disk without the lock: registration may go on meanwhile.
  std::shared_ptr<const LoraAdapter> adapter =
      memory ? memory : std::make_shared<const LoraAdapter>(load_lora_adapter(name, path, base_, shard_));

  std::lock_guard lock(mu_);
  Entry& e = find_locked(name, "acquire");  // it may have been removed meanwhile
  if (e.slot >= 0) {  // loaded by another caller meanwhile
    ++e.pins;
    return e.slot;
  }
  MIL_CHECK(e.registration == registration, "adapter '{}' was re-registered while it loaded; retry",
            name);
  e.bytes = adapter->bytes();  // the files may have changed since registration
  for (;;) {
    const bool slot_free = std::find(slots_.begin(), slots_.end(), nullptr) != slots_.end();
    if (slot_free && resident_bytes_ + e.bytes <= limits_.max_bytes) break;
    Entry* victim = nullptr;
    for (Entry* r : slots_) {
      if (r != nullptr && r->pins == 0 && (victim == nullptr || r->last_used < victim->last_used)) victim = r;
    }
    if (victim == nullptr) {
      fail("cannot make adapter '{}' resident: every resident adapter is pinned by running "
           "requests (limits: {} adapters, {} bytes; {} bytes resident, it needs {})", name,
           limits_.max_resident, limits_.max_bytes, resident_bytes_, e.bytes);
    }
    free_slot_locked(victim->slot);
  }
  const auto free_it = std::find(slots_.begin(), slots_.end(), nullptr);
  const auto slot = static_cast<int32_t>(free_it - slots_.begin());
  e.adapter = std::move(adapter);
  fill_slot_locked(slot, e);
  e.pins = 1;
  e.last_used = ++clock_;
  return slot;
}

void AdapterStore::release(int32_t slot) {
  std::lock_guard lock(mu_);
  MIL_CHECK(slot >= 0 && slot < num_slots() && slots_[slot] != nullptr && slots_[slot]->pins > 0,
            "release of adapter slot {}, which no request holds", slot);
  Entry& e = *slots_[slot];
  --e.pins;
  e.last_used = ++clock_;  // in use until now: recency counts from the release
}

void AdapterStore::use_backend(Ops& ops) {
  std::lock_guard lock(mu_);
  MIL_CHECK(std::all_of(slots_.begin(), slots_.end(), [](Entry* e) { return e == nullptr; }),
            "adapter store: use_backend after adapters became resident");
  backend_ = ops.device() == Device::CPU ? nullptr : &ops;
  device_slots_.clear();
  device_slots_.resize(slots_.size());
}

void AdapterStore::fill_slot_locked(int32_t slot, Entry& e) {
  const LoraAdapter& a = *e.adapter;
  // On a device backend the slot's tensors are the same bytes at the same offsets in one
  // device allocation.
  const auto* host_base = static_cast<const std::byte*>(a.storage());
  std::byte* device_base = nullptr;
  if (backend_ != nullptr && a.bytes() > 0) {
    OwnedTensor& d = device_slots_[slot];
    d = backend_->allocate(DType::F32, 1, static_cast<int64_t>(a.bytes() / sizeof(float)));
    backend_->upload(host_base, d.view());
    backend_->synchronize();
    device_base = d.view().ptr<std::byte>();
  }
  auto place = [&](const Tensor& t) {
    if (device_base == nullptr || t.empty()) return t;
    Tensor d = t;
    d.data = device_base + (static_cast<const std::byte*>(t.data) - host_base);
    d.device = backend_->device();
    return d;
  };
  for (int64_t layer = 0; layer < base_.num_layers; ++layer) {
    for (int t = 0; t < kNumLoraTargets; ++t) {
      Table& tab = table(layer, static_cast<LoraTarget>(t));
      const LoraModule* m = a.module(layer, static_cast<LoraTarget>(t));
      tab.a[slot] = m ? place(m->a) : Tensor{};
      tab.b[slot] = m ? place(m->b) : Tensor{};
      tab.scale[slot] = m ? m->scale : 0.0f;
    }
  }
  slots_[slot] = &e;
  e.slot = slot;
  resident_bytes_ += a.bytes();
  update_max_rank_locked();
}

void AdapterStore::free_slot_locked(int32_t slot) {
  Entry& e = *slots_[slot];
  for (Table& tab : tables_) {
    tab.a[slot] = Tensor{};
    tab.b[slot] = Tensor{};
    tab.scale[slot] = 0.0f;
  }
  if (!device_slots_.empty()) device_slots_[slot] = OwnedTensor{};
  resident_bytes_ -= e.adapter->bytes();
  e.adapter.reset();
  e.slot = -1;
  slots_[slot] = nullptr;
  update_max_rank_locked();
}

void AdapterStore::update_max_rank_locked() {
  // Called whenever a slot is filled or emptied: device backends refresh their copies of the
  // slot tables when the generation moves.
  ++generation_;
  for (Table& tab : tables_) tab.proj.generation = generation_;
  int32_t rank = 0;
  for (Entry* e : slots_) {
    if (e != nullptr) rank = std::max(rank, e->adapter->max_rank());
  }
  max_rank_.store(rank, std::memory_order_relaxed);
}

const LoraProjection& AdapterStore::projection(int64_t layer, LoraTarget target) const {
  MIL_CHECK(layer >= 0 && layer < base_.num_layers, "adapter store: layer {} is out of range", layer);
  return tables_[layer * kNumLoraTargets + static_cast<int>(target)].proj;
}

}  // namespace mil
