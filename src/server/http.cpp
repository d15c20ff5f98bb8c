// HttpRequest helpers (server/http.h); the transport itself is http_server.cpp.
#include "server/http.h"

namespace mil::server {

std::string_view HttpRequest::header(std::string_view name) const {
  const auto it = headers.find(name);
  return it == headers.end() ? std::string_view{} : std::string_view{it->second};
}

}  // namespace mil::server
