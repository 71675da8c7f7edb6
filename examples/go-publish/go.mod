module example.com/tidings-go-publish

go 1.19
