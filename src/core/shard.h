// Which tensor-parallel rank this process is, of how many. Loaders of weights and adapters
// read only this rank's slice.
#pragma once

namespace mil {

struct ShardSpec {
  int rank = 0;
  int world = 1;
};

}  // namespace mil
