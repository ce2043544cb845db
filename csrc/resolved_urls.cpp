#include "resolved_urls.h"

#include <algorithm>
#include <chrono>

namespace flash {

ResolvedUrls& ResolvedUrls::instance() {
  static ResolvedUrls* urls = new ResolvedUrls;  // never destroyed: reads may run while the process exits
  return *urls;
}

ResolvedUrls::Lookup ResolvedUrls::find(const std::string& url, double wait_s) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(std::max(wait_s, 0.0));
  std::unique_lock<std::mutex> lock(mu_);
  forget_if_forked();
  for (;;) {
    Entry& e = entries_[url];
    if (e.known) return {true, false, e.target};
    if (!e.resolving) {
      e.resolving = true;
      return {false, true, {}};
    }
    if (changed_.wait_until(lock, until) == std::cv_status::timeout) return {};
  }
}

void ResolvedUrls::remember(const std::string& url, const Url& target) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    forget_if_forked();
    Entry& e = entries_[url];
    e.resolving = false;
    e.known = true;
    e.target = target;
  }
  changed_.notify_all();
}

void ResolvedUrls::release(const std::string& url) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = entries_.find(url);
    if (it == entries_.end() || !it->second.resolving) return;
    it->second.resolving = false;
  }
  changed_.notify_all();
}

void ResolvedUrls::forget(const std::string& url, const Url& target) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = entries_.find(url);
  if (it != entries_.end() && it->second.known && it->second.target.origin() == target.origin() &&
      it->second.target.target == target.target)
    it->second.known = false;
}

void ResolvedUrls::forget_if_forked() {
  if (pid_ == ::getpid()) return;
  entries_.clear();
  pid_ = ::getpid();
}

size_t ResolvedUrls::clear() {
  size_t known = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& kv : entries_) known += kv.second.known;
    entries_.clear();
  }
  changed_.notify_all();
  return known;
}

}  // namespace flash
