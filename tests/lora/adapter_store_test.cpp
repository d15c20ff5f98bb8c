// AdapterStore: registration, residency limits (count and bytes), LRU eviction, pinning,
// reloads, errors, and the per-slot projection tables the ops read.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <thread>

#include "lora/adapter_store.h"
#include "lora/adapter_writer.h"

namespace mil::test {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// Adapters "a", "b", "c", "d" on disk: rank 2 on q/v (same bytes each), except "big" (rank 8,
// every projection).
class AdapterStoreTest : public testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : {"a", "b", "c", "d"}) {
      dirs_[name] = std::make_unique<AdapterDir>();
      dirs_[name]->standard(base_, 2, 4, {LoraTarget::Q, LoraTarget::V});
    }
    dirs_["big"] = std::make_unique<AdapterDir>();
    dirs_["big"]->standard(base_, 8, 8);
  }
  std::unique_ptr<AdapterStore> make(int max_resident, size_t max_bytes = size_t{1} << 30,
                                     std::initializer_list<const char*> names = {"a", "b", "c", "d"}) {
    auto store = std::make_unique<AdapterStore>(base_, ShardSpec{}, AdapterStore::Limits{max_resident, max_bytes});
    for (const char* n : names) store->add(n, dir(n));
    return store;
  }
  std::string dir(const std::string& name) { return dirs_.at(name)->path(); }
  size_t small_bytes() {  // one rank-2 q/v adapter: 2 layers x (q: 2x16 + 16x2, v: 2x16 + 8x2)
    return size_t{2} * ((2 * 16 + 16 * 2) + (2 * 16 + 8 * 2)) * sizeof(float);
  }

  ModelConfig base_ = tiny_base();
  std::map<std::string, std::unique_ptr<AdapterDir>> dirs_;
};

TEST_F(AdapterStoreTest, RegistersWithoutLoading) {
  auto store = make(2);
  EXPECT_EQ(store->registered_count(), 4u);
  EXPECT_EQ(store->resident_count(), 0u);
  EXPECT_EQ(store->resident_bytes(), 0u);
  EXPECT_TRUE(store->contains("c"));
  EXPECT_FALSE(store->contains("e"));
  EXPECT_EQ(store->names(), (std::vector<std::string>{"a", "b", "c", "d"}));
  EXPECT_EQ(store->num_slots(), 2);
  EXPECT_EQ(store->max_rank(), 0);
}

TEST_F(AdapterStoreTest, RegistrationErrors) {
  auto store = make(2);
  EXPECT_NE(error_of([&] { store->add("a", dir("b")); }).find("already registered"), std::string::npos);
  EXPECT_NE(error_of([&] { store->add("", dir("b")); }).find("invalid adapter name"), std::string::npos);
  EXPECT_NE(error_of([&] { store->add("two words", dir("b")); }).find("invalid adapter name"), std::string::npos);
  EXPECT_NO_THROW(store->add("org/name-v1.2", dir("b")));
  // A bad adapter fails at registration and stays unregistered.
  AdapterDir broken;
  broken.standard(base_, 2, 2, {LoraTarget::Q});
  broken.write("adapter_config.json", R"({"peft_type": "LORA", "r": 2, "target_modules": ["q_proj"], "use_dora": true})");
  EXPECT_NE(error_of([&] { store->add("broken", broken.path()); }).find("use_dora"), std::string::npos);
  EXPECT_FALSE(store->contains("broken"));
  // An adapter that could never be resident.
  auto tight = make(2, small_bytes(), {});
  EXPECT_NE(error_of([&] { tight->add("big", dir("big")); }).find("more than"), std::string::npos);
  EXPECT_NO_THROW(tight->add("a", dir("a")));
}

TEST_F(AdapterStoreTest, UnknownAdapterIsAnErrorNotTheBaseModel) {
  auto store = make(2);
  EXPECT_NE(error_of([&] { store->acquire("nope"); }).find("unknown adapter 'nope'"), std::string::npos);
  EXPECT_NE(error_of([&] { store->remove("nope"); }).find("unknown adapter 'nope'"), std::string::npos);
  EXPECT_EQ(store->resident_count(), 0u);
}

TEST_F(AdapterStoreTest, EvictsLeastRecentlyUsedFirst) {
  auto store = make(3);
  for (const char* n : {"a", "b", "c"}) store->release(store->acquire(n));
  EXPECT_EQ(store->resident_count(), 3u);
  EXPECT_EQ(store->resident_bytes(), 3 * small_bytes());
  // Touch "a": "b" becomes the least recently used.
  const int32_t slot_a = store->acquire("a");
  store->release(slot_a);
  const int32_t slot_b_before = [&] {
    for (int32_t s = 0; s < 3; ++s) if (store->slot_name(s) == "b") return s;
    return -1;
  }();
  const int32_t slot_d = store->acquire("d");
  EXPECT_EQ(slot_d, slot_b_before);  // d took b's slot
  EXPECT_EQ(store->slot_name(slot_d), "d");
  EXPECT_EQ(store->slot_name(slot_a), "a");
  store->release(slot_d);
  // Now c is the oldest; acquiring b again evicts c and reloads b.
  const int32_t slot_b = store->acquire("b");
  EXPECT_EQ(store->slot_name(slot_b), "b");
  std::vector<std::string> resident;
  for (int32_t s = 0; s < 3; ++s) resident.push_back(store->slot_name(s));
  std::sort(resident.begin(), resident.end());
  EXPECT_EQ(resident, (std::vector<std::string>{"a", "b", "d"}));
  store->release(slot_b);
  EXPECT_EQ(store->resident_count(), 3u);
}

TEST_F(AdapterStoreTest, PinnedAdaptersAreNeverEvicted) {
  auto store = make(2);
  const int32_t a = store->acquire("a");
  const int32_t b = store->acquire("b");
  EXPECT_NE(a, b);
  EXPECT_EQ(store->acquire("a"), a);  // a second request on a resident adapter: same slot
  EXPECT_EQ(store->pins("a"), 2);
  const std::string err = error_of([&] { store->acquire("c"); });
  EXPECT_NE(err.find("cannot make adapter 'c' resident"), std::string::npos) << err;
  EXPECT_EQ(store->slot_name(a), "a");
  EXPECT_EQ(store->slot_name(b), "b");
  store->release(a);
  EXPECT_THROW(store->acquire("c"), Error);  // a still has one pin
  store->release(a);
  EXPECT_EQ(store->acquire("c"), a);  // a was the only unpinned one
  EXPECT_EQ(store->slot_name(b), "b");
  EXPECT_EQ(store->pins("a"), 0);
  EXPECT_THROW(store->release(a + 100), Error);
  store->release(a);
  EXPECT_THROW(store->release(a), Error);  // no pin left
  store->release(b);
}

TEST_F(AdapterStoreTest, ByteLimitBoundsResidency) {
  auto store = make(8, 2 * small_bytes() + small_bytes() / 2);
  for (const char* n : {"a", "b", "c", "d"}) store->release(store->acquire(n));
  EXPECT_EQ(store->resident_count(), 2u);
  EXPECT_LE(store->resident_bytes(), 2 * small_bytes() + small_bytes() / 2);
  std::vector<std::string> resident;
  for (int32_t s = 0; s < 8; ++s) {
    if (!store->slot_name(s).empty()) resident.push_back(store->slot_name(s));
  }
  std::sort(resident.begin(), resident.end());
  EXPECT_EQ(resident, (std::vector<std::string>{"c", "d"}));

  // Pinned bytes count: with c and d pinned there is no room for a.
  const int32_t c = store->acquire("c");
  const int32_t d = store->acquire("d");
  EXPECT_NE(error_of([&] { store->acquire("a"); }).find("resident"), std::string::npos);
  store->release(c);
  store->release(d);
}

TEST_F(AdapterStoreTest, RemoveFreesAndRefusesWhilePinned) {
  auto store = make(2);
  const int32_t a = store->acquire("a");
  EXPECT_NE(error_of([&] { store->remove("a"); }).find("running request"), std::string::npos);
  EXPECT_TRUE(store->contains("a"));
  store->release(a);
  store->remove("a");
  EXPECT_FALSE(store->contains("a"));
  EXPECT_EQ(store->resident_count(), 0u);
  EXPECT_EQ(store->resident_bytes(), 0u);
  EXPECT_EQ(store->slot_name(a), "");
  EXPECT_TRUE(store->projection(0, LoraTarget::Q).a[a].empty());
  EXPECT_THROW(store->acquire("a"), Error);
  store->add("a", dir("a"));  // the name is free again
  store->release(store->acquire("a"));
}

TEST_F(AdapterStoreTest, ProjectionTablesFollowTheSlots) {
  auto store = make(2, size_t{1} << 30, {"a", "big"});
  const LoraProjection& q0 = store->projection(0, LoraTarget::Q);
  const LoraProjection& down1 = store->projection(1, LoraTarget::Down);
  const Tensor* q0_a = q0.a;
  EXPECT_EQ(q0.num_slots, 2);
  for (int32_t s = 0; s < 2; ++s) EXPECT_TRUE(q0.a[s].empty() && q0.b[s].empty());

  const int32_t a = store->acquire("a");
  EXPECT_EQ(store->max_rank(), 2);
  ASSERT_FALSE(q0.a[a].empty());
  EXPECT_EQ(q0.a[a].rows, 2);
  EXPECT_EQ(q0.a[a].cols, 16);
  EXPECT_EQ(q0.b[a].rows, 16);
  EXPECT_FLOAT_EQ(q0.scale[a], 2.0f);
  EXPECT_TRUE(down1.a[a].empty());  // "a" targets q and v only
  EXPECT_EQ(q0.a[a].row<float>(1)[3], test_value(1, 16 + 3));  // seed of layer 0 q's A is 1

  const int32_t big = store->acquire("big");
  EXPECT_EQ(store->max_rank(), 8);
  EXPECT_FALSE(down1.a[big].empty());
  EXPECT_EQ(down1.b[big].cols, 8);
  EXPECT_FLOAT_EQ(down1.scale[big], 1.0f);
  store->release(big);
  store->release(a);

  // Evict big by filling its slot with b: the tables lose big's entries and gain b's.
  store->add("b", dir("b"));
  store->release(store->acquire("a"));  // a is now more recent than big
  const int32_t b = store->acquire("b");
  EXPECT_EQ(b, big);
  EXPECT_TRUE(down1.a[b].empty());
  EXPECT_FALSE(q0.a[b].empty());
  EXPECT_EQ(store->max_rank(), 2);
  EXPECT_EQ(store->projection(0, LoraTarget::Q).a, q0_a);  // storage never moves
  store->release(b);
  EXPECT_THROW(store->projection(2, LoraTarget::Q), Error);
}

TEST_F(AdapterStoreTest, EvictedAdapterReloadsWithTheSameValues) {
  auto store = make(1);
  const int32_t first = store->acquire("a");
  const float before = store->projection(1, LoraTarget::V).b[first].row<float>(5)[1];
  store->release(first);
  store->release(store->acquire("b"));
  EXPECT_EQ(store->slot_name(0), "b");
  const int32_t again = store->acquire("a");
  EXPECT_EQ(store->slot_name(again), "a");
  EXPECT_EQ(store->projection(1, LoraTarget::V).b[again].row<float>(5)[1], before);
  store->release(again);
}

TEST_F(AdapterStoreTest, WeightsAreReadAtAcquireAndFailuresLeaveTheStoreIntact) {
  auto store = make(2);
  // Corrupt "b" after registration: registration succeeded, the load fails at acquire.
  dirs_["b"]->write("adapter_model.safetensors", std::string("garbage"));
  EXPECT_NE(error_of([&] { store->acquire("b"); }).find("adapter_model.safetensors"), std::string::npos);
  EXPECT_EQ(store->resident_count(), 0u);
  EXPECT_TRUE(store->contains("b"));
  store->release(store->acquire("a"));
  EXPECT_EQ(store->resident_count(), 1u);
}

TEST_F(AdapterStoreTest, RegistrationFromAnotherThread) {
  auto store = make(2);
  std::vector<std::unique_ptr<AdapterDir>> extra;
  for (int i = 0; i < 20; ++i) {
    extra.push_back(std::make_unique<AdapterDir>());
    extra.back()->standard(base_, 2, 2, {LoraTarget::K});
  }
  std::thread registrar([&] {
    for (int i = 0; i < 20; ++i) store->add("extra" + std::to_string(i), extra[i]->path());
  });
  for (int i = 0; i < 50; ++i) {
    const int32_t s = store->acquire(i % 2 ? "a" : "c");
    store->release(s);
  }
  registrar.join();
  EXPECT_EQ(store->registered_count(), 24u);
  store->release(store->acquire("extra19"));
}

TEST(AdapterStoreLimits, AreChecked) {
  EXPECT_THROW(AdapterStore(tiny_base(), ShardSpec{}, AdapterStore::Limits{0, 1}), Error);
  EXPECT_THROW(AdapterStore(tiny_base(), ShardSpec{}, AdapterStore::Limits{1, 0}), Error);
  EXPECT_THROW(AdapterStore(tiny_base(), ShardSpec{2, 2}, AdapterStore::Limits{1, 1}), Error);
}

TEST(AdapterStoreShards, LoadsThisRanksSlice) {
  AdapterDir dir;
  dir.standard(tiny_base(), 2, 2);
  AdapterStore store(tiny_base(), ShardSpec{1, 2}, AdapterStore::Limits{1, size_t{1} << 20});
  store.add("x", dir.path());
  const int32_t s = store.acquire("x");
  EXPECT_EQ(store.projection(0, LoraTarget::Q).b[s].rows, 8);   // 16 / 2
  EXPECT_EQ(store.projection(0, LoraTarget::O).a[s].cols, 8);   // 16 / 2
  EXPECT_EQ(store.projection(0, LoraTarget::Down).a[s].cols, 12);
  EXPECT_EQ(store.projection(0, LoraTarget::Down).b[s].rows, 16);
  store.release(s);
}

}  // namespace
}  // namespace mil::test
