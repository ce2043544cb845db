#include "tensor_table.h"

namespace flash {

bool TensorTable::index_names(std::string* duplicate) {
  by_name_.clear();
  by_name_.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!by_name_.emplace(tensors[i].name, static_cast<uint32_t>(i)).second) {
      *duplicate = tensors[i].name;
      return false;
    }
  }
  return true;
}

}  // namespace flash
