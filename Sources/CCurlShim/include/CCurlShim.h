#ifndef KRNATIVE_CCURLSHIM_H
#define KRNATIVE_CCURLSHIM_H
// Typed wrappers around libcurl's variadic calls, which Swift cannot call directly.
#include <curl/curl.h>

typedef size_t (*krn_curl_write_fn)(char *data, size_t size, size_t nmemb, void *context);
typedef int (*krn_curl_xferinfo_fn)(void *context, curl_off_t dltotal, curl_off_t dlnow,
                                    curl_off_t ultotal, curl_off_t ulnow);
typedef size_t (*krn_curl_header_fn)(char *data, size_t size, size_t nitems, void *context);
typedef size_t (*krn_curl_read_fn)(char *buffer, size_t size, size_t nitems, void *context);
typedef int (*krn_curl_prereq_fn)(void *context, char *primary_ip, char *local_ip, int primary_port, int local_port);

CURLcode krn_curl_setopt_long(CURL *handle, CURLoption option, long value);
CURLcode krn_curl_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value);
CURLcode krn_curl_setopt_string(CURL *handle, CURLoption option, const char *value);
CURLcode krn_curl_setopt_pointer(CURL *handle, CURLoption option, void *value);
CURLcode krn_curl_setopt_write_function(CURL *handle, krn_curl_write_fn fn);
CURLcode krn_curl_setopt_header_function(CURL *handle, krn_curl_header_fn fn);
CURLcode krn_curl_setopt_xferinfo_function(CURL *handle, krn_curl_xferinfo_fn fn);
CURLcode krn_curl_setopt_read_function(CURL *handle, krn_curl_read_fn fn);
/// Called once connected, before each request is sent (libcurl 7.80 or later).
CURLcode krn_curl_setopt_prereq_function(CURL *handle, krn_curl_prereq_fn fn);

CURLcode krn_curl_getinfo_long(CURL *handle, CURLINFO info, long *value);
CURLcode krn_curl_getinfo_off_t(CURL *handle, CURLINFO info, curl_off_t *value);
CURLcode krn_curl_getinfo_string(CURL *handle, CURLINFO info, const char **value);

#endif
