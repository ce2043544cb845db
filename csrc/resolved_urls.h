// Where each data URL's redirects led, remembered for the rest of a load: a Hub resolve
// URL answers every range GET with a 302 to a signed CDN URL, and resolving it again for
// each piece costs a request to a rate-limited resolver per piece (a 140 GB model in
// 8 MiB pieces: ~17,000). The first request for a URL resolves it while the other
// threads wait for its answer (so a load resolves each URL once); later ranges go
// straight to the target. A target that fails (an expired signature: 401/403/410, or no
// connection) is forgotten, and the URL resolved again. Loads forget everything when
// they end (release_idle_connections), so a signature never outlives its load. A forked
// child starts with none (a claim of its parent's threads would never be settled there).
#pragma once
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>

#include <unistd.h>

#include "http_protocol.h"

namespace flash {

class ResolvedUrls {
 public:
  static ResolvedUrls& instance();

  // What a request for `url` starts from: the remembered target (found), or nothing, and
  // then `claimed` when the caller is to resolve it for everyone (it must call remember
  // or release). Waits up to `wait_s` for another thread's resolution in progress; past
  // that the caller resolves on its own, unclaimed.
  struct Lookup {
    bool found = false, claimed = false;
    Url target;
  };
  Lookup find(const std::string& url, double wait_s);

  // `url` leads to `target` (an answer with a body came from there).
  void remember(const std::string& url, const Url& target);
  // The claim of `url` ends without a target: a waiting thread takes it over.
  void release(const std::string& url);
  // `target` failed: forgotten, unless another thread has already put a newer one.
  void forget(const std::string& url, const Url& target);
  // Forgets every URL; returns how many were known.
  size_t clear();

 private:
  struct Entry {
    bool resolving = false, known = false;
    Url target;
  };
  void forget_if_forked();  // with mu_ held

  std::mutex mu_;
  std::condition_variable changed_;
  pid_t pid_ = ::getpid();
  std::map<std::string, Entry> entries_;
};

}  // namespace flash
