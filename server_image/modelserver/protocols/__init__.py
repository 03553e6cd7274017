"""KServe V1 and OIP V2 request and response shapes, their JSON codec; imports runtimes, core."""
