#include "CCurlShim.h"

CURLcode krn_curl_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}
CURLcode krn_curl_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value) {
    return curl_easy_setopt(handle, option, value);
}
CURLcode krn_curl_setopt_string(CURL *handle, CURLoption option, const char *value) {
    return curl_easy_setopt(handle, option, value);
}
CURLcode krn_curl_setopt_pointer(CURL *handle, CURLoption option, void *value) {
    return curl_easy_setopt(handle, option, value);
}
CURLcode krn_curl_setopt_write_function(CURL *handle, krn_curl_write_fn fn) {
    return curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, fn);
}
CURLcode krn_curl_setopt_header_function(CURL *handle, krn_curl_header_fn fn) {
    return curl_easy_setopt(handle, CURLOPT_HEADERFUNCTION, fn);
}
CURLcode krn_curl_setopt_xferinfo_function(CURL *handle, krn_curl_xferinfo_fn fn) {
    return curl_easy_setopt(handle, CURLOPT_XFERINFOFUNCTION, fn);
}
CURLcode krn_curl_setopt_read_function(CURL *handle, krn_curl_read_fn fn) {
    return curl_easy_setopt(handle, CURLOPT_READFUNCTION, fn);
}
CURLcode krn_curl_setopt_prereq_function(CURL *handle, krn_curl_prereq_fn fn) {
    return curl_easy_setopt(handle, CURLOPT_PREREQFUNCTION, fn);
}
CURLcode krn_curl_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl_easy_getinfo(handle, info, value);
}
CURLcode krn_curl_getinfo_off_t(CURL *handle, CURLINFO info, curl_off_t *value) {
    return curl_easy_getinfo(handle, info, value);
}
CURLcode krn_curl_getinfo_string(CURL *handle, CURLINFO info, const char **value) {
    return curl_easy_getinfo(handle, info, value);
}
