// parallel_for: splits [0, n) into contiguous ranges over a fixed number of std::threads.
// Thread count: SEQMIX_NUM_THREADS if set, else std::thread::hardware_concurrency().
// Work items must write disjoint outputs; the reference never reduces across threads with
// floating atomics, so results do not depend on the thread count.
#pragma once

#include <cstdint>
#include <functional>

namespace seqmix::parallel {

int num_threads();
void parallel_for(int64_t n, const std::function<void(int64_t begin, int64_t end)>& body);

}  // namespace seqmix::parallel
