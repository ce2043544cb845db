// Credentials per origin: the Authorization header value the reader sends on requests to
// one origin (scheme, host and port: "https://huggingface.co") and to no other. A redirect
// that leads to another host (a Hub resolve URL to its CDN's presigned URL) gets none:
// a presigned URL refuses a second credential, and a token must not leak. One registry
// per process, shared with the Python small-object client (bindings.cpp); the values are
// never put in messages.
#pragma once
#include <string>

#include "http_protocol.h"

namespace flash {

// Sends `authorization` (e.g. "Bearer hf_...") to `origin` from now on; "" forgets it.
// IoError for an origin that is not an http(s) URL without a path, or a value that
// cannot be a header (CR, LF or NUL).
void authorize_origin(const std::string& origin, const std::string& authorization);

// The Authorization value for requests to `url`'s origin, or "".
std::string origin_authorization(const Url& url);

}  // namespace flash
