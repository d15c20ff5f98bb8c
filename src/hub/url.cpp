// The untrusted-text half of hub_client.h: http(s) URL parsing, redirect resolution, and the
// repo id / revision / filename rules that keep cache paths inside the cache.
#include <algorithm>
#include <charconv>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "hub/hub_client.h"

namespace mil::hub {
namespace {

constexpr size_t kMaxUrlChars = 8192;
constexpr size_t kMaxHostChars = 253;
constexpr size_t kMaxRepoPartChars = 96;
constexpr size_t kMaxRevisionChars = 255;
constexpr size_t kMaxFilenameChars = 1024;

[[noreturn]] void invalid_url(std::string_view text, const std::string& why) {
  // The URL came from the network or a flag: show a bounded, printable prefix.
  std::string shown;
  for (char ch : text.substr(0, 200)) {
    const auto c = static_cast<unsigned char>(ch);
    shown += (c > 0x20 && c < 0x7f) ? ch : '?';
  }
  if (text.size() > 200) shown += "...";
  throw HubError(HubError::Kind::InvalidArgument, 0, "invalid URL '" + shown + "': " + why);
}

bool is_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}
bool name_char(char c) { return is_alnum(c) || c == '.' || c == '_' || c == '-'; }
char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

std::string to_lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), lower);
  return out;
}

// '/'-separated parts, each non-empty, not "." or "..", of name characters.
bool valid_path_parts(std::string_view text, size_t max_chars) {
  if (text.empty() || text.size() > max_chars) return false;
  size_t begin = 0;
  for (;;) {
    const size_t end = std::min(text.find('/', begin), text.size());
    const std::string_view part = text.substr(begin, end - begin);
    if (part.empty() || part == "." || part == "..") return false;
    if (!std::all_of(part.begin(), part.end(), name_char)) return false;
    if (end == text.size()) return true;
    begin = end + 1;
  }
}

bool valid_repo_part(std::string_view part) {
  if (part.empty() || part.size() > kMaxRepoPartChars) return false;
  if (!std::all_of(part.begin(), part.end(), name_char)) return false;
  const char first = part.front(), last = part.back();
  if (first == '.' || first == '-' || last == '.' || last == '-') return false;
  return part.find("--") == std::string_view::npos && part.find("..") == std::string_view::npos;
}

uint16_t default_port(std::string_view scheme) { return scheme == "https" ? 443 : 80; }

// RFC 3986 5.2.4 on the path only.
std::string remove_dot_segments(std::string_view path) {
  std::vector<std::string_view> out;
  size_t begin = 1;  // path starts with '/'
  bool trailing_slash = false;
  while (begin <= path.size()) {
    const size_t end = std::min(path.find('/', begin), path.size());
    const std::string_view seg = path.substr(begin, end - begin);
    trailing_slash = (seg == "." || seg == "..") && end == path.size();
    if (seg == "..") {
      if (!out.empty()) out.pop_back();
    } else if (seg != ".") {
      out.push_back(seg);
    }
    begin = end + 1;
  }
  std::string result;
  for (std::string_view seg : out) {
    result += '/';
    result += seg;
  }
  if (trailing_slash || result.empty()) result += '/';
  return result;
}

}  // namespace

std::string Url::str(bool with_query) const {
  std::string out = scheme + "://";
  const bool ipv6 = host.find(':') != std::string::npos;
  if (ipv6) out += '[';
  out += host;
  if (ipv6) out += ']';
  if (port != default_port(scheme)) {
    out += ':';
    out += std::to_string(port);
  }
  out.append(target, 0, with_query ? std::string::npos : target.find('?'));
  return out;
}

Url parse_url(std::string_view text) {
  if (text.size() > kMaxUrlChars) invalid_url(text, "longer than 8192 characters");
  for (char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c >= 0x7f) invalid_url(text, "holds a space, control or non-ASCII character");
  }
  Url url;
  const size_t sep = text.find("://");
  if (sep == std::string_view::npos) invalid_url(text, "no scheme (expected http:// or https://)");
  url.scheme = to_lower(text.substr(0, sep));
  if (url.scheme != "http" && url.scheme != "https") {
    invalid_url(text, "scheme '" + url.scheme.substr(0, 16) + "' is not http or https");
  }
  std::string_view rest = text.substr(sep + 3);
  const size_t auth_end = std::min(rest.find_first_of("/?#"), rest.size());
  const std::string_view authority = rest.substr(0, auth_end);
  rest.remove_prefix(auth_end);
  if (authority.find('@') != std::string_view::npos) {
    invalid_url(text, "user info ('user@host') is not accepted");
  }
  std::string_view host, port_text;
  if (!authority.empty() && authority.front() == '[') {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) invalid_url(text, "unterminated IPv6 address");
    host = authority.substr(1, close - 1);
    if (host.empty() || !std::all_of(host.begin(), host.end(), [](char c) {
          return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
                 c == ':' || c == '.';
        })) {
      invalid_url(text, "malformed IPv6 address");
    }
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') invalid_url(text, "unexpected text after the IPv6 address");
      port_text = after.substr(1);
      if (port_text.empty()) invalid_url(text, "empty port");
    }
  } else {
    const size_t colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != std::string_view::npos) {
      port_text = authority.substr(colon + 1);
      if (port_text.empty()) invalid_url(text, "empty port");
    }
    if (host.empty()) invalid_url(text, "no host");
    if (host.size() > kMaxHostChars) invalid_url(text, "host longer than 253 characters");
    if (!std::all_of(host.begin(), host.end(), name_char) || host.front() == '.' ||
        host.front() == '-') {
      invalid_url(text, "malformed host name");
    }
  }
  url.host = to_lower(host);
  url.port = default_port(url.scheme);
  if (!port_text.empty()) {
    unsigned value = 0;
    const auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), value);
    if (ec != std::errc{} || end != port_text.data() + port_text.size() || port_text.size() > 5 ||
        value == 0 || value > 65535) {
      invalid_url(text, "port is not a number in [1, 65535]");
    }
    url.port = static_cast<uint16_t>(value);
  }
  rest = rest.substr(0, rest.find('#'));
  // (appended, not "/" + string: GCC 12 -O3 raises a false -Wrestrict on the concatenation)
  if (rest.empty() || rest.front() != '/') url.target.push_back('/');
  url.target.append(rest);
  return url;
}

Url resolve_location(const Url& base, std::string_view location) {
  if (location.empty()) invalid_url(location, "empty redirect location");
  // An absolute URL starts with a scheme: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":".
  const size_t colon = location.find(':');
  const size_t delim = location.find_first_of("/?#");
  if (colon != std::string_view::npos && (delim == std::string_view::npos || colon < delim) &&
      colon > 0 && is_alnum(location.front())) {
    return parse_url(location);
  }
  if (location.starts_with("//")) return parse_url(base.scheme + ":" + std::string(location));
  // Same origin: validate the characters by parsing it onto the base's authority.
  const std::string origin = Url{base.scheme, base.host, base.port, "/"}.str();
  const std::string origin_prefix = origin.substr(0, origin.size() - 1);
  const std::string_view base_path = std::string_view(base.target).substr(0, base.target.find('?'));
  std::string target;
  if (location.front() == '/') {
    target = std::string(location);
  } else if (location.front() == '?') {
    target = std::string(base_path) + std::string(location);
  } else if (location.front() == '#') {
    target = base.target;
  } else {
    target = std::string(base_path.substr(0, base_path.rfind('/') + 1)) + std::string(location);
  }
  Url url = parse_url(origin_prefix + target);
  const size_t q = url.target.find('?');
  url.target = remove_dot_segments(std::string_view(url.target).substr(0, q)) +
               (q == std::string::npos ? std::string() : url.target.substr(q));
  return url;
}

bool valid_repo_id(std::string_view repo_id) {
  const size_t slash = repo_id.find('/');
  if (slash == std::string_view::npos) return false;
  return valid_repo_part(repo_id.substr(0, slash)) && valid_repo_part(repo_id.substr(slash + 1));
}

bool valid_revision(std::string_view revision) {
  return valid_path_parts(revision, kMaxRevisionChars);
}

bool valid_filename(std::string_view filename) {
  return valid_path_parts(filename, kMaxFilenameChars);
}

}  // namespace mil::hub
